//! ember train
