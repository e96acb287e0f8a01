//! Date normalisation, the seq2seq task that needs no download: dates written the ways people
//! write them ("3rd of March 1998", "Mar 3, 98", "03.03.1998", "tuesday, march 3 1998",
//! "3 mars 1998", "3. März 1998" …) → ISO 8601 (`1998-03-03`).
//!
//! Every format is unambiguous by a fixed rule, so the task is learnable exactly: slashes are
//! month/day/year (US), dots are day.month.year, two-digit years mean 1950–2049.

use std::path::Path;

use crate::rng::SplitMix64;

/// One example: what a person wrote and its ISO form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DateExample {
    pub source: String,
    pub target: String,
}

/// A calendar date (proleptic Gregorian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Date {
    pub year: u32,
    pub month: u32,
    pub day: u32,
}

const MONTHS_EN: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const MONTHS_FR: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];
const MONTHS_DE: [&str; 12] = [
    "Januar",
    "Februar",
    "März",
    "April",
    "Mai",
    "Juni",
    "Juli",
    "August",
    "September",
    "Oktober",
    "November",
    "Dezember",
];
const MONTHS_ES: [&str; 12] = [
    "enero",
    "febrero",
    "marzo",
    "abril",
    "mayo",
    "junio",
    "julio",
    "agosto",
    "septiembre",
    "octubre",
    "noviembre",
    "diciembre",
];
const WEEKDAYS_EN: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Number of written formats [`render`] knows.
pub const NUM_FORMATS: usize = 16;

fn is_leap(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

/// Days in `month` (1–12) of `year`.
pub fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Date {
    /// `YYYY-MM-DD`.
    pub fn iso(&self) -> String {
        format!("{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }

    /// 0 = Monday … 6 = Sunday (days since 0001-01-01, a Monday in the proleptic calendar).
    pub fn weekday(&self) -> usize {
        let y = self.year - 1;
        let mut days = 365 * y + y / 4 - y / 100 + y / 400;
        days += (1..self.month)
            .map(|m| days_in_month(self.year, m))
            .sum::<u32>();
        days += self.day - 1;
        (days % 7) as usize
    }
}

fn ordinal(day: u32) -> String {
    let suffix = match (day % 10, day % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{day}{suffix}")
}

/// `date` written in format `format` (0 ≤ format < [`NUM_FORMATS`]). Formats with a two-digit
/// year are only used for 1950–2049 by [`generate`].
pub fn render(date: Date, format: usize) -> String {
    let Date { year, month, day } = date;
    let m = (month - 1) as usize;
    let en = MONTHS_EN[m];
    let short = &en[..3];
    let yy = year % 100;
    match format {
        0 => format!("{} of {en} {year}", ordinal(day)),
        1 => format!("{en} {day}, {year}"),
        2 => format!("{short} {day}, {yy:02}"),
        3 => format!("{day:02}.{month:02}.{year}"),
        4 => format!("{month:02}/{day:02}/{year}"),
        5 => format!("{}, {en} {day} {year}", WEEKDAYS_EN[date.weekday()]),
        6 => format!("{day} {en} {year}"),
        7 => format!("{day:02} {short} {year}"),
        8 => format!("{year}/{month:02}/{day:02}"),
        9 => format!("{year}{month:02}{day:02}"),
        10 => format!("{day} {} {year}", MONTHS_FR[m]),
        11 => format!("{day}. {} {year}", MONTHS_DE[m]),
        12 => format!("{day} de {} de {year}", MONTHS_ES[m]),
        13 => format!("{month}/{day}/{yy:02}"),
        14 => format!("{en} {}, {year}", ordinal(day)),
        _ => format!("{day}.{month}.{yy:02}"),
    }
}

/// Whether `format` writes the year with two digits.
fn two_digit_year(format: usize) -> bool {
    matches!(format, 2 | 13 | 15)
}

/// A random date in 1900–2099, with any format and letter case people use.
fn example(rng: &mut SplitMix64) -> DateExample {
    let format = rng.below(NUM_FORMATS as u64) as usize;
    let (from, to) = if two_digit_year(format) {
        (1950, 2049)
    } else {
        (1900, 2099)
    };
    let year = from + rng.below(u64::from(to - from + 1)) as u32;
    let month = 1 + rng.below(12) as u32;
    let day = 1 + rng.below(u64::from(days_in_month(year, month))) as u32;
    let date = Date { year, month, day };
    let written = render(date, format);
    let source = match rng.below(4) {
        0 => written.to_lowercase(),
        1 => written.to_uppercase(),
        _ => written,
    };
    DateExample {
        source,
        target: date.iso(),
    }
}

/// `n` distinct examples (no source twice), reproducible from `seed`.
pub fn generate(n: usize, seed: u64) -> Vec<DateExample> {
    let mut rng = SplitMix64::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    // About 3.4M distinct sources exist; far more than anyone asks for.
    while out.len() < n {
        let example = example(&mut rng);
        if seen.insert(example.source.clone()) {
            out.push(example);
        }
    }
    out
}

/// Sizes of the train / validation / test files for `n` examples (80 / 10 / 10).
pub fn split_sizes(n: usize) -> (usize, usize, usize) {
    let val = n / 10;
    let test = n / 10;
    (n - val - test, val, test)
}

/// Writes `train.tsv`, `val.tsv` and `test.tsv` (`source<TAB>target` per line, no header)
/// into `dir`, each file written whole and renamed into place.
pub fn write_splits(dir: &Path, examples: &[DateExample]) -> std::io::Result<[usize; 3]> {
    std::fs::create_dir_all(dir)?;
    let (train, val, _) = split_sizes(examples.len());
    let parts = [
        ("train.tsv", &examples[..train]),
        ("val.tsv", &examples[train..train + val]),
        ("test.tsv", &examples[train + val..]),
    ];
    for (name, part) in parts {
        let text: String = part
            .iter()
            .map(|e| format!("{}\t{}\n", e.source, e.target))
            .collect();
        crate::write_atomically(&dir.join(name), text.as_bytes())?;
    }
    Ok(parts.map(|(_, part)| part.len()))
}
