//! The configuration loader on any text: it never panics, and every problem
//! it reports is placed inside the text (syntax errors always are).

#![no_main]

use std::path::Path;

use halo::config::{parse, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Err(error) = parse(text, Path::new("fuzz.toml")) else {
        return;
    };
    let ConfigError::Invalid { problems } = &error else {
        panic!("parsing text reported a read error: {error:#}");
    };
    assert!(
        !problems.is_empty(),
        "an invalid configuration without problems"
    );
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in problems {
        match problem.position {
            Some((line, column)) => {
                let Some(text_line) = line.checked_sub(1).and_then(|i| lines.get(i)) else {
                    panic!("{problem}: line {line} of a text of {} lines", lines.len());
                };
                let columns = text_line.chars().count() + 1;
                assert!(
                    (1..=columns).contains(&column),
                    "{problem}: column {column} of a line of {columns} columns"
                );
            }
            None => assert!(
                !problem.key.is_empty(),
                "syntax error without a position: {problem}"
            ),
        }
    }
    let _ = error.to_string();
});
