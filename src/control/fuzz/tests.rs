//! The control and config fuzz oracles on the stable toolchain: each committed corpus
//! replayed (every cut of it), then seeded mutations, every `cargo test`.

use super::*;
use crate::fuzz_corpus::Mutations;

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
    let m = Mutations {
        count: n,
        keep_first,
        // Cuts every few bytes: a config text is longer than an HTTP head.
        cut_step: 3,
        tokens: TOKENS,
    };
    crate::fuzz_corpus::exercise(target, &m, one);
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

/// Each YAML document was read a second time by re-parsing every document before it:
/// an `apply` of 1,000 documents (57 KB) took 39 s in a debug build, 4,000 took 7
/// minutes, and the control plane answered nobody meanwhile (4 MiB may be sent). Now
/// linear: 4,000 documents in about half a second on the same build.
#[test]
fn yaml_documents_were_reparsed_quadratically() {
    let mut text = String::new();
    for i in 0..3_000 {
        text.push_str(&format!(
            "---\nclusters:\n- {{name: c{i}, endpoints: [\"127.0.0.1:1\"]}}\n"
        ));
    }
    // A bad document last: its line number is still found.
    text.push_str("---\nclusters:\n- {name: late, endpoints: [\"127.0.0.1:1\"], bogus: 1}\n");
    let t = std::time::Instant::now();
    let e = config::parse_only(&text, Format::Yaml).unwrap_err();
    assert_eq!(e.problems[0].line, Some(3 * 3_000 + 3), "{e}");
    text.truncate(text.rfind("---").expect("the last document"));
    let cfg = config::parse_only(&text, Format::Yaml).expect("3,000 documents");
    assert_eq!(cfg.clusters.len(), 3_000);
    // Generous (a loaded 2-vCPU machine, debug build); it took minutes before.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        t.elapsed()
    );
}
