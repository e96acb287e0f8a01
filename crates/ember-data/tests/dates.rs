//! The date-normalisation data: calendar facts, the written formats, reproducible splits.

use ember_data::dates::{Date, NUM_FORMATS, days_in_month, generate, render, write_splits};

fn date(year: u32, month: u32, day: u32) -> Date {
    Date { year, month, day }
}

#[test]
fn weekdays_and_month_lengths_are_the_calendars() {
    // Known days of the week: 0 = Monday.
    assert_eq!(date(1998, 3, 3).weekday(), 1); // Tuesday
    assert_eq!(date(2000, 1, 1).weekday(), 5); // Saturday
    assert_eq!(date(1969, 7, 20).weekday(), 6); // Sunday
    assert_eq!(date(2024, 2, 29).weekday(), 3); // Thursday
    assert_eq!(date(1900, 1, 1).weekday(), 0); // Monday
    assert_eq!(days_in_month(2000, 2), 29);
    assert_eq!(days_in_month(1900, 2), 28);
    assert_eq!(days_in_month(2024, 2), 29);
    assert_eq!(days_in_month(2023, 4), 30);
}

#[test]
fn the_issue_examples_are_among_the_formats() {
    let d = date(1998, 3, 3);
    let all: Vec<String> = (0..NUM_FORMATS).map(|f| render(d, f)).collect();
    for wanted in [
        "3rd of March 1998",
        "Mar 3, 98",
        "03.03.1998",
        "Tuesday, March 3 1998",
        "3 mars 1998",
        "3. März 1998",
        "3 de marzo de 1998",
        "03/03/1998",
        "19980303",
    ] {
        assert!(all.iter().any(|s| s == wanted), "{wanted} not in {all:?}");
    }
    let ordinals: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 31]
        .iter()
        .map(|&day| render(date(2001, 1, day), 0))
        .collect();
    assert_eq!(
        ordinals
            .iter()
            .map(|s| s.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        [
            "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "31st"
        ]
    );
}

#[test]
fn generated_examples_are_distinct_reproducible_and_correct() {
    let examples = generate(5000, 42);
    assert_eq!(examples, generate(5000, 42));
    assert_ne!(examples, generate(5000, 43));
    let sources: std::collections::HashSet<_> = examples.iter().map(|e| &e.source).collect();
    assert_eq!(sources.len(), 5000);
    for e in &examples {
        let parts: Vec<u32> = e.target.split('-').map(|p| p.parse().unwrap()).collect();
        let (y, m, d) = (parts[0], parts[1], parts[2]);
        assert!((1900..=2099).contains(&y) && (1..=12).contains(&m), "{e:?}");
        assert!(d >= 1 && d <= days_in_month(y, m), "{e:?}");
        // Read the numeric formats back by their rules: D.M.Y with dots, M/D/Y with slashes.
        let s = &e.source;
        let nums: Vec<u32> = s
            .split(['.', '/'])
            .filter_map(|p| p.trim().parse().ok())
            .collect();
        if s.len() == 10 && s.as_bytes()[2] == b'.' {
            assert_eq!(nums, [d, m, y], "{e:?}");
        }
        if s.len() == 10 && s.as_bytes()[2] == b'/' {
            assert_eq!(nums, [m, d, y], "{e:?}");
        }
        if s.len() == 10 && s.as_bytes()[4] == b'/' {
            assert_eq!(nums, [y, m, d], "{e:?}");
        }
        if s.matches('/').count() == 2 && s.len() < 10 {
            // m/d/yy: two-digit years are 1950–2049.
            let yy = y % 100;
            assert!((1950..=2049).contains(&y), "{e:?}");
            assert_eq!(nums, [m, d, yy], "{e:?}");
        }
    }
    // Every format and all three letter cases occur.
    assert!(examples.iter().any(|e| e.source.contains("MÄRZ")));
    assert!(examples.iter().any(|e| e.source.contains("de junio de")));
    assert!(examples.iter().any(|e| e.source.starts_with("tuesday, ")));
}

#[test]
fn splits_are_80_10_10_tsv_files() {
    let dir = tempfile::tempdir().unwrap();
    let examples = generate(1000, 7);
    let sizes = write_splits(dir.path(), &examples).unwrap();
    assert_eq!(sizes, [800, 100, 100]);
    let train = std::fs::read_to_string(dir.path().join("train.tsv")).unwrap();
    let first = train.lines().next().unwrap();
    assert_eq!(
        first,
        format!("{}\t{}", examples[0].source, examples[0].target)
    );
    let test = std::fs::read_to_string(dir.path().join("test.tsv")).unwrap();
    assert_eq!(test.lines().count(), 100);
    assert!(test.lines().all(|l| l.split('\t').count() == 2));
}
