//! ember models
