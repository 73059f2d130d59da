//! The control and config fuzz oracles on the stable toolchain: each committed corpus
//! replayed (every cut of it), then seeded mutations, every `cargo test`.

use super::*;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the committed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("a corpus file"))
        .collect()
}

/// Tokens the mutator splices in: the bytes YAML, TOML and JSON structure turns on.
const TOKENS: &[&[u8]] = &[
    b"\n",
    b":",
    b": ",
    b"- ",
    b"---\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b",",
    b"=",
    b"  ",
    b"#",
    b"*a",
    b"&a ",
    b"!!str ",
    b"0",
    b"-1",
    b"1e9",
    b"null",
    b"~",
    b"\t",
    b"[[clusters]]\n",
    b"\\n",
    b"\\u0000",
    b"99999999999999999999",
    b"1s",
    b"0.25s",
];

fn exercise(target: &str, n: usize, keep_first: bool, one: fn(&[u8])) {
    let seeds = corpus(target);
    assert!(seeds.len() >= 4, "{target}: corpus too small");
    for s in &seeds {
        // Cuts every few bytes: a config text is longer than an HTTP head.
        for cut in (0..=s.len()).step_by(3) {
            one(&s[..cut]);
        }
    }
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let from = usize::from(keep_first);
    for _ in 0..n {
        let mut m = seeds[(next() % seeds.len() as u64) as usize].clone();
        for _ in 0..next() % 4 + 1 {
            let i = from + (next() as usize) % (m.len().saturating_sub(from) + 1);
            match next() % 4 {
                0 if i < m.len() => m[i] = next() as u8,
                1 if i < m.len() => {
                    m.remove(i);
                }
                2 => {
                    let t = TOKENS[(next() % TOKENS.len() as u64) as usize];
                    m.splice(i..i, t.iter().copied());
                }
                _ => m.insert(i, next() as u8),
            }
        }
        one(&m);
    }
}

#[test]
fn control_corpus_and_mutations_keep_the_oracle() {
    exercise("control", 4_000, false, control_one);
}

#[test]
fn config_corpus_and_mutations_keep_the_oracle() {
    exercise("config", 4_000, true, config_one);
}

// === regressions: one test per bug the oracles found, named after it ===

/// A TOML text ending in `name =` was refused with an empty message (`toml` leaves
/// that error's message empty): the operator was told nothing.
#[test]
fn toml_syntax_error_had_an_empty_message() {
    let e = config::parse("[[listeners]]\nname =", Format::Toml).unwrap_err();
    let m = &e.problems[0].message;
    assert!(!m.trim().is_empty(), "{e:?}");
    eprintln!("{m}");
    config_one(b"\x01[[listeners]]\nname =");
}
