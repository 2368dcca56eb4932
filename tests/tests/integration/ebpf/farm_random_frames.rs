//! The farm ingress program under random frames (SPEC §11: malformed
//! packets to the XDP program), each checked through BPF_PROG_TEST_RUN
//! against the reference model `halo_tests::xdp_model`: the same verdict,
//! and for passed and answered frames the same bytes. So frames not for a
//! VIP pass byte for byte, VIP frames pass only in buckets this node serves
//! and with its own MAC, and ARP and neighbour discovery for a VIP are
//! answered only by the owner of the requester's bucket.
//!
//! `HALO_XDP_FRAMES` sets how many frames (default 300,000, about 15 s in
//! a debug build on 2 cores); `HALO_XDP_SEED` replays a run (default:
//! random, printed). A mismatch names the seed and the frame's index.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use halo::ebpf::farm::FarmIngress;
use halo_tests::{
    random_frames::{self, Damage, FrameGenerator, Kind, SplitMix64},
    xdp_model::{Action, FarmModel, Prediction, Reason},
};

/// A fresh program (empty UDP flow table) and configuration this often.
const FRAMES_PER_CONFIG: usize = 40_000;
/// A new bucket table, same program and configuration, this often.
const FRAMES_PER_TABLE: usize = 10_000;
/// Mismatches reported in full before the test gives up.
const MISMATCHES_SHOWN: usize = 10;

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let text = text.trim().replace('_', "");
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

fn random_seed() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.finish()
}

fn hex(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, line) in bytes.chunks(16).enumerate() {
        let _ = write!(out, "\n    {:04x}:", i * 16);
        for byte in line {
            let _ = write!(out, " {byte:02x}");
        }
    }
    out
}

/// Counts per (frame kind, action, model's reason) and per damage.
#[derive(Default)]
struct Tally {
    by_kind: BTreeMap<(Kind, Action, Reason), u64>,
    by_damage: BTreeMap<(Damage, Action), u64>,
    vlan_tagged: u64,
    ipv4_options: u64,
}

impl Tally {
    fn report(&self, frames: usize, elapsed: Duration) -> String {
        let mut out = format!(
            "{frames} frames in {:.1} s ({:.0} frames/s); {} VLAN-tagged, {} with IPv4 options\n",
            elapsed.as_secs_f64(),
            frames as f64 / elapsed.as_secs_f64(),
            self.vlan_tagged,
            self.ipv4_options
        );
        let mut totals: BTreeMap<Action, u64> = BTreeMap::new();
        let mut kinds: BTreeMap<Kind, BTreeMap<(Action, Reason), u64>> = BTreeMap::new();
        for ((kind, action, reason), n) in &self.by_kind {
            *totals.entry(*action).or_default() += n;
            *kinds
                .entry(*kind)
                .or_default()
                .entry((*action, *reason))
                .or_default() += n;
        }
        let _ = writeln!(out, "by action: {totals:?}");
        for (kind, counts) in kinds {
            let cells: Vec<String> = counts
                .iter()
                .map(|((action, reason), n)| format!("{action:?}/{reason:?} {n}"))
                .collect();
            let _ = writeln!(out, "  {kind:?}: {}", cells.join(", "));
        }
        let damage: Vec<String> = self
            .by_damage
            .iter()
            .map(|((damage, action), n)| format!("{damage:?}/{action:?} {n}"))
            .collect();
        let _ = writeln!(out, "by damage: {}", damage.join(", "));
        out
    }
}

/// What the program did, in the model's terms.
fn observed(ingress: &mut FarmIngress, frame: &[u8]) -> (u32, Vec<u8>) {
    ingress
        .test_run_output(frame)
        .unwrap_or_else(|error| panic!("BPF_PROG_TEST_RUN on {} bytes: {error:#}", frame.len()))
}

fn agrees(expected: &Prediction, verdict: u32, out: &[u8]) -> bool {
    Action::from_xdp(verdict) == Some(expected.action)
        && expected.output.as_deref().is_none_or(|bytes| bytes == out)
}

#[test]
fn random_frames_get_the_reference_models_verdict_and_bytes() {
    let total = env_number("HALO_XDP_FRAMES").unwrap_or(300_000) as usize;
    let seed = env_number("HALO_XDP_SEED").unwrap_or_else(random_seed);
    println!("HALO_XDP_SEED={seed:#x} HALO_XDP_FRAMES={total}");
    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    let mut mismatches = Vec::new();
    let mut mismatch_count = 0u64;
    let mut mismatch_kinds: BTreeMap<(Kind, Reason, Option<Action>), u64> = BTreeMap::new();
    let started = Instant::now();
    let mut index = 0;
    while index < total {
        let config = random_frames::config(&mut rng);
        let mut ingress = FarmIngress::load().unwrap();
        ingress
            .configure(
                config.own_mac,
                &config.vips,
                &config.rules,
                // Longer than any run: a remembered UDP flow stays fresh.
                Duration::from_secs(24 * 3600),
            )
            .unwrap();
        ingress.set_buckets(&config.buckets).unwrap();
        let generator = FrameGenerator::new(&config, &mut rng);
        let mut model = FarmModel::new(config);
        let config_end = total.min(index + FRAMES_PER_CONFIG);
        while index < config_end {
            if index % FRAMES_PER_CONFIG != 0 && index % FRAMES_PER_TABLE == 0 {
                let table = random_frames::bucket_table(&mut rng);
                ingress.set_buckets(&table).unwrap();
                model.set_buckets(table);
            }
            let generated = generator.frame(&mut rng);
            let frame = &generated.frame;
            let expected = model.predict(frame);
            let (verdict, out) = observed(&mut ingress, frame);
            *tally
                .by_kind
                .entry((generated.kind, expected.action, expected.reason))
                .or_default() += 1;
            *tally
                .by_damage
                .entry((generated.damage, expected.action))
                .or_default() += 1;
            tally.vlan_tagged += u64::from(generated.vlan_tags > 0);
            tally.ipv4_options += u64::from(generated.ipv4_options);
            if !agrees(&expected, verdict, &out) {
                mismatch_count += 1;
                *mismatch_kinds
                    .entry((generated.kind, expected.reason, Action::from_xdp(verdict)))
                    .or_default() += 1;
                if mismatches.len() < MISMATCHES_SHOWN {
                    let output = match &expected.output {
                        Some(bytes) if Action::from_xdp(verdict) == Some(expected.action) => {
                            format!(
                                "\n  expected output:{}\n  program output:{}",
                                hex(bytes),
                                hex(&out)
                            )
                        }
                        _ => String::new(),
                    };
                    mismatches.push(format!(
                        "HALO_XDP_SEED={seed:#x} frame {index} ({:?}, {} VLAN tags, {:?}), {} bytes:{}\n  \
                         model: {:?} ({:?}); program: {verdict} ({:?}){output}",
                        generated.kind,
                        generated.vlan_tags,
                        generated.damage,
                        frame.len(),
                        hex(frame),
                        expected.action,
                        expected.reason,
                        Action::from_xdp(verdict),
                    ));
                }
            }
            index += 1;
        }
    }
    let report = tally.report(total, started.elapsed());
    println!("{report}");
    assert!(
        mismatch_count == 0,
        "{mismatch_count} of {total} frames got another verdict or other bytes from the \
         program than from the model (replay with HALO_XDP_SEED={seed:#x} \
         HALO_XDP_FRAMES={total}); by (kind, model's reason, program's action): \
         {mismatch_kinds:?}; the first ones:\n{}\n{report}",
        mismatches.join("\n")
    );
}
