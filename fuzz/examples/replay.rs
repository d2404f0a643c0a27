//! Stable-toolchain runner for the fuzz targets, for machines without nightly/cargo-fuzz.
//!
//! ```text
//! cargo run --release --no-default-features --example replay -- TARGET [--time SECS] [--seed N] [PATH...]
//! ```
//!
//! Runs every file under the given paths (corpus directories or single files; by default
//! `seeds/TARGET` and `corpus/TARGET` when they exist), then, for `--time` seconds (default
//! 30, 0 = replay only), random inputs: seeds mutated byte-wise, spliced, and stuffed with
//! tokens from `dict/TARGET.dict`. Not coverage-guided, so weaker than libFuzzer, but it needs
//! nothing beyond stable Rust. A panic saves the input to `artifacts/TARGET/crash-<hash>`,
//! prints it, and exits 1.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// xorshift64*: small, seedable, good enough for mutation choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn files_under(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for e in entries {
            files_under(&e, out);
        }
    } else if path.is_file() {
        out.push(path.to_path_buf());
    }
}

/// Tokens of a libFuzzer dictionary (`name="value"` or `"value"` lines, `\xNN` escapes).
fn dictionary(path: &Path) -> Vec<Vec<u8>> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (Some(a), Some(b)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        let raw = &line.as_bytes()[a + 1..b];
        let mut tok = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'\\' && i + 1 < raw.len() {
                // `\xNN` is a byte; `\c` is `c` (for `\"` and `\\`).
                let hex = raw
                    .get(i + 2..i + 4)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match (raw[i + 1], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                    (b'x', Some(v)) => {
                        tok.push(v);
                        i += 4;
                    }
                    (c, _) => {
                        tok.push(c);
                        i += 2;
                    }
                }
                continue;
            }
            tok.push(raw[i]);
            i += 1;
        }
        out.push(tok);
    }
    out
}

fn mutate(rng: &mut Rng, pool: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut v = if pool.is_empty() || rng.below(8) == 0 {
        (0..rng.below(64)).map(|_| rng.next() as u8).collect()
    } else {
        pool[rng.below(pool.len())].clone()
    };
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(v.len() + 1);
        match rng.below(9) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            2 if !v.is_empty() => {
                let end = (at + 1 + rng.below(8)).min(v.len());
                v.drain(at.min(v.len())..end.max(at.min(v.len())));
            }
            3 | 4 if !dict.is_empty() => {
                let tok = &dict[rng.below(dict.len())];
                v.splice(at..at, tok.iter().copied());
            }
            5 if !pool.is_empty() => {
                let other = &pool[rng.below(pool.len())];
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                v.splice(at..at, other[from..to].iter().copied());
            }
            6 => {
                let b = [
                    b'\n', b';', b'=', b',', b'%', b'"', b':', b'&', b' ', 0, 0xff,
                ][rng.below(11)];
                v.insert(at, b);
            }
            7 if !v.is_empty() => {
                // Repeat a slice: long values, many cookies, many hops.
                let from = rng.below(v.len());
                let to = (from + 1 + rng.below(16)).min(v.len());
                let piece = v[from..to].to_vec();
                for _ in 0..rng.below(32) {
                    v.splice(at..at, piece.iter().copied());
                }
            }
            _ => v.insert(at, rng.next() as u8),
        }
    }
    v.truncate(4096);
    v
}

fn hash_of(data: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    data.hash(&mut h);
    h.finish()
}

fn crash(target: &str, data: &[u8], root: &Path) -> ! {
    let dir = root.join("artifacts").join(target);
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("crash-{:016x}", hash_of(data)));
    let _ = std::fs::write(&file, data);
    eprintln!(
        "\n==== {target}: PANIC on input ({} bytes), saved to {}\n{:?}\n",
        data.len(),
        file.display(),
        String::from_utf8_lossy(data)
    );
    eprintln!(
        "hex: {}",
        data.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::process::exit(1);
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!(
            "usage: replay TARGET [--time SECS] [--seed N] [PATH...]\ntargets: {}",
            sticky_cluster_fuzz::TARGETS.join(", ")
        );
        std::process::exit(2);
    };
    if !sticky_cluster_fuzz::TARGETS.contains(&target.as_str()) {
        eprintln!(
            "unknown target {target:?}; targets: {}",
            sticky_cluster_fuzz::TARGETS.join(", ")
        );
        std::process::exit(2);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (mut secs, mut seed, mut paths) = (30u64, 0x5eed_u64, Vec::new());
    while let Some(a) = args.next() {
        match a.as_str() {
            "--time" => secs = args.next().and_then(|s| s.parse().ok()).unwrap_or(secs),
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).unwrap_or(seed),
            _ => paths.push(PathBuf::from(a)),
        }
    }
    if paths.is_empty() {
        paths.push(root.join("seeds").join(&target));
        paths.push(root.join("corpus").join(&target));
    }
    let mut files = Vec::new();
    for p in &paths {
        files_under(p, &mut files);
    }
    let dict = dictionary(&root.join("dict").join(format!("{target}.dict")));

    // Panics are caught and reported with their input; silence the default hook's output
    // for all but the report.
    std::panic::set_hook(Box::new(|info| eprintln!("panic: {info}")));
    let run = |data: &[u8]| {
        let ok = std::panic::catch_unwind(|| sticky_cluster_fuzz::run(&target, data)).is_ok();
        if !ok {
            crash(&target, data, &root);
        }
    };

    let mut pool = Vec::new();
    for f in &files {
        if let Ok(data) = std::fs::read(f) {
            run(&data);
            pool.push(data);
        }
    }
    println!(
        "{target}: replayed {} files ({} dictionary tokens)",
        files.len(),
        dict.len()
    );

    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut execs = 0u64;
    let start = Instant::now();
    while Instant::now() < deadline {
        for _ in 0..256 {
            let input = mutate(&mut rng, &pool, &dict);
            run(&input);
            execs += 1;
            // Keep a few mutants as parents, so mutations stack up (a crude corpus).
            if rng.below(64) == 0 {
                if pool.len() < 4096 {
                    pool.push(input);
                } else {
                    let i = rng.below(pool.len());
                    pool[i] = input;
                }
            }
        }
    }
    let took = start.elapsed().as_secs_f64().max(1e-9);
    println!(
        "{target}: {execs} random inputs in {took:.1} s ({:.0}/s), seed {seed}, no panic",
        execs as f64 / took
    );
}
