//! Oracles for the control-socket fuzz target (`fuzz/fuzz_targets/control.rs`) and the
//! stable-toolchain test that replays its corpus with seeded mutations.
//!
//! The control socket is local but its peer is not trusted to be well-formed: one
//! request line goes through [`Request::parse`], and an `apply` carries a config text
//! (YAML or TOML, operator input) through [`crate::config::parse`]. Properties beyond
//! "does not panic": a refused request or config says why (a message, problems with
//! text, lines inside the text); an accepted request encodes and parses back to itself;
//! an accepted config written out as YAML parses back to the same config.
//!
//! Allocates and is slow on purpose: for fuzzing and tests only.

use super::protocol::Request;
use crate::config::{self, ConfigError, Format};

/// The `control` target: one request line (the newline excluded).
pub fn control_one(line: &[u8]) {
    match Request::parse(line) {
        Err(msg) => assert!(!msg.trim().is_empty(), "a refusal without a reason"),
        Ok(req) => {
            let again = serde_json::to_vec(&req).expect("a request encodes");
            assert_eq!(
                Request::parse(&again).as_ref(),
                Ok(&req),
                "a request's round trip"
            );
            if let Request::Apply { config, format, .. } = &req {
                config_text(config, *format);
            }
        }
    }
}

/// The `config` target: the first byte picks the syntax (low bit: TOML), the rest is
/// the text.
pub fn config_one(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if sel & 1 == 1 {
        Format::Toml
    } else {
        Format::Yaml
    };
    config_text(text, format);
}

fn config_text(text: &str, format: Format) {
    match config::parse(text, format) {
        Err(e) => problems_say_why(&e, text),
        Ok(cfg) => {
            let yaml = serde_yaml::to_string(&cfg).expect("a config encodes");
            match config::parse(&yaml, Format::Yaml) {
                Ok(again) => assert_eq!(again, cfg, "a config's round trip through\n{yaml}"),
                Err(e) => panic!("an accepted config written out is refused: {e}\n{yaml}"),
            }
        }
    }
}

fn problems_say_why(e: &ConfigError, text: &str) {
    assert!(!e.problems.is_empty(), "an error without problems");
    // Line breaks as YAML counts them: LF, CRLF, and a lone CR.
    let b = text.as_bytes();
    let breaks = (0..b.len())
        .filter(|&i| b[i] == b'\n' || (b[i] == b'\r' && b.get(i + 1) != Some(&b'\n')))
        .count();
    let lines = breaks + 1;
    for p in &e.problems {
        assert!(
            !p.message.trim().is_empty(),
            "a problem without a message at `{}` in {text:?}",
            p.path
        );
        if let Some(l) = p.line {
            assert!(
                l >= 1 && l <= lines + 1,
                "line {l} of a {lines}-line text: {text:?}\n{e}"
            );
        }
    }
}

#[cfg(test)]
mod tests;
