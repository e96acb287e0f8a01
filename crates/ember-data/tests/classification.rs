//! The book's SMS spam split and the CSV/TSV reader.

mod common;

use ember_data::classification::{TableError, read_sms_spam, read_table, split, write_csv};

#[test]
fn the_spam_split_has_the_books_sizes_and_is_balanced() {
    let path = common::cache()
        .file("sms-spam", "sms_spam/SMSSpamCollection")
        .unwrap();
    let data = read_sms_spam(&path).unwrap();
    let spam = data.examples.iter().filter(|e| e.label == 1).count();
    assert_eq!(spam, 747);
    assert_eq!(data.label_names, ["ham", "spam"]);
    let parts = split(&data, true, 123);
    assert_eq!(
        (parts.train.len(), parts.validation.len(), parts.test.len()),
        (1045, 149, 300)
    );
    let all: Vec<_> = [&parts.train, &parts.validation, &parts.test]
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(all.iter().filter(|e| e.label == 1).count(), 747);
    assert_eq!(all.iter().filter(|e| e.label == 0).count(), 747);
    // The same seed gives the same split; another seed another one.
    assert_eq!(split(&data, true, 123), parts);
    assert_ne!(split(&data, true, 124).train, parts.train);

    // Written as CSV (texts with commas and quotes survive) and read back.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("test.csv");
    write_csv(&file, &parts.test).unwrap();
    let back = read_table(&file, "Text", "Label").unwrap();
    assert_eq!(back.examples, parts.test);
}

#[test]
fn malformed_files_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let sms = dir.path().join("sms.txt");
    std::fs::write(&sms, "ham\tfine\nspam\tbuy\nmaybe\tnot\n").unwrap();
    let err = read_sms_spam(&sms).unwrap_err();
    assert!(matches!(err, TableError::Line { line: 3, .. }), "{err}");
    assert!(err.to_string().contains("unknown label `maybe`"));
    std::fs::write(&sms, "ham fine\n").unwrap();
    assert!(
        read_sms_spam(&sms)
            .unwrap_err()
            .to_string()
            .contains("line 1: expected")
    );

    let tsv = dir.path().join("reviews.tsv");
    std::fs::write(&tsv, "review\tsentiment\ngreat\tpos\nawful\tneg\nok\tpos\n").unwrap();
    let data = read_table(&tsv, "review", "sentiment").unwrap();
    assert_eq!(data.label_names, ["neg", "pos"]);
    assert_eq!(data.examples.len(), 3);
    let err = read_table(&tsv, "text", "sentiment")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no column `text`"), "{err}");
}
