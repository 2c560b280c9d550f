//! Mutation fuzzing of the parsers that read outside input, on stable Rust: each input is a seed
//! from a corpus of valid examples changed by random edits (bit flips, inserted and deleted
//! bytes, truncation, a splice of another seed, bytes that parsers give meaning to), generated,
//! run and (on a failure) shrunk by proptest. A failure is a panic in the property: parsers must
//! answer every input with a value or an error. It is not coverage-guided (that needs nightly's
//! sanitizer coverage, which this toolchain cannot install); the corpus carries the structure.
//!
//! `NEREID_FUZZ_CASES` sets the inputs per target (default [`DEFAULT_CASES`], the bounded run
//! every `cargo test` makes); `NEREID_FUZZ_SEED` fixes the random seed (default: fixed, so a run
//! repeats exactly; set it to explore further).

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Inputs per target in the bounded run.
pub const DEFAULT_CASES: u32 = 1_000;

/// Bytes that change how a parser reads what follows.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"-",
    b"0",
    b"-1",
    b"1e308",
    b"null",
    b"\xff",
    b"\x00",
    b"\n",
    b"<",
    b"#",
    b"99999999999999999999",
    b"\"BYTES\"",
    b"\"FP16\"",
];

#[derive(Debug, Clone)]
enum Edit {
    Flip {
        at: usize,
        bit: u8,
    },
    Insert {
        at: usize,
        byte: u8,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
    Token {
        at: usize,
        token: usize,
    },
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Edit::Flip { at, bit }),
        (at, any::<u8>()).prop_map(|(at, byte)| Edit::Insert { at, byte }),
        (at, 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        at.prop_map(|at| Edit::Truncate { at }),
        (at, 0..TOKENS.len()).prop_map(|(at, token)| Edit::Token { at, token }),
        (at, any::<usize>(), any::<usize>(), 1usize..64).prop_map(|(at, seed, from, len)| {
            Edit::Splice {
                at,
                seed,
                from,
                len,
            }
        }),
    ]
}

fn apply(seeds: &[Vec<u8>], mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
        match *e {
            Edit::Flip { at, bit } if !data.is_empty() => {
                let i = at % data.len();
                data[i] ^= 1 << bit;
            }
            Edit::Flip { .. } => {}
            Edit::Insert { at, byte } => data.insert(pos(at, data.len()), byte),
            Edit::Delete { at, len } if !data.is_empty() => {
                let i = at % data.len();
                data.drain(i..(i + len).min(data.len()));
            }
            Edit::Delete { .. } => {}
            Edit::Truncate { at } => data.truncate(pos(at, data.len())),
            Edit::Token { at, token } => {
                let i = pos(at, data.len());
                data.splice(i..i, TOKENS[token].iter().copied());
            }
            Edit::Splice {
                at,
                seed,
                from,
                len,
            } => {
                let other = &seeds[seed % seeds.len()];
                if !other.is_empty() {
                    let start = from % other.len();
                    let piece = &other[start..(start + len).min(other.len())];
                    let i = pos(at, data.len());
                    data.splice(i..i, piece.iter().copied());
                }
            }
        }
    }
    data
}

/// Inputs made from `seeds`: one seed (or nothing), changed by up to eight edits, or bytes
/// that are not derived from any seed at all.
pub fn mutated(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    assert!(!seeds.is_empty(), "a fuzz target needs at least one seed");
    let count = seeds.len();
    let seeds = std::sync::Arc::new(seeds);
    let from_seeds = (0..count, prop::collection::vec(edit(), 0..8))
        .prop_map(move |(i, edits)| apply(&seeds, seeds[i].clone(), &edits));
    prop_oneof![
        9 => from_seeds,
        1 => prop::collection::vec(any::<u8>(), 0..256),
    ]
    .boxed()
}

/// Every file below `dir` (sorted by name), as seeds.
pub fn seeds_from(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .collect()
}

/// Inputs per target (`NEREID_FUZZ_CASES`, default [`DEFAULT_CASES`]).
pub fn cases() -> u32 {
    std::env::var("NEREID_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

/// Runs `property` on [`cases`] inputs from `strategy`; a panic fails the test with the
/// smallest input proptest finds that still panics. Prints the number of inputs tried.
pub fn run<T: std::fmt::Debug>(
    target: &str,
    strategy: impl Strategy<Value = T>,
    property: impl Fn(T),
) {
    let seed: u64 = std::env::var("NEREID_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6e65_7265_6964);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let config = Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |input| {
        property(input);
        Ok(())
    });
    if let Err(failure) = result {
        panic!("fuzz target {target} failed: {failure}");
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr().lock(),
        "fuzz {target}: {} inputs, no panics, {:.1} s",
        cases(),
        started.elapsed().as_secs_f64()
    );
}
