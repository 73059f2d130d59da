//! The stable-toolchain side of the fuzz targets, shared by every oracle's tests: read
//! a target's committed corpus (`fuzz/corpus/<target>`), replay every seed and its cuts,
//! then seeded mutations (byte flips, deletions, insertions, splices of the protocol's
//! own tokens, truncation) through the target's oracle. Deterministic: the same inputs
//! every `cargo test`. Tests only; never in the daemon.

/// The committed corpus of `target`, sorted by file name (at least four seeds).
pub(crate) fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("the committed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("a corpus file"))
        .collect();
    assert!(seeds.len() >= 4, "{target}: corpus too small");
    seeds
}

/// xorshift64: cheap, seeded, good enough to pick mutations.
pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// How a target's inputs are mutated.
pub(crate) struct Mutations<'a> {
    /// Mutated inputs per run.
    pub count: usize,
    /// Keep the first byte (a target that reads its first byte as a selector).
    pub keep_first: bool,
    /// Replay the seeds' prefixes every `cut_step` bytes (1: every prefix).
    pub cut_step: usize,
    /// The bytes the target's grammar turns on, spliced in at random places.
    pub tokens: &'a [&'a [u8]],
}

/// `seed` with one to four mutations.
fn mutate(rng: &mut Rng, seed: &[u8], m: &Mutations) -> Vec<u8> {
    let mut v = seed.to_vec();
    let from = usize::from(m.keep_first);
    for _ in 0..rng.below(4) + 1 {
        let i = from + rng.below(v.len().saturating_sub(from) + 1);
        match rng.below(5) {
            0 if i < v.len() => v[i] = rng.next() as u8,
            1 if i < v.len() => {
                v.remove(i);
            }
            2 => v.insert(i, rng.next() as u8),
            3 => {
                let t = m.tokens[rng.below(m.tokens.len())];
                v.splice(i..i, t.iter().copied());
            }
            _ => v.truncate(i.max(from)),
        }
    }
    v
}

/// Every seed of `target`'s corpus and its cuts, then `m.count` mutations, through `one`.
pub(crate) fn exercise(target: &str, m: &Mutations, one: fn(&[u8])) {
    let seeds = corpus(target);
    for s in &seeds {
        for cut in (0..=s.len()).step_by(m.cut_step.max(1)) {
            one(&s[..cut]);
        }
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..m.count {
        let s = &seeds[rng.below(seeds.len())];
        one(&mutate(&mut rng, s, m));
    }
}
