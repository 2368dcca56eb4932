//! The bucket table: which node accepts the new flows of each bucket.
//!
//! The farm's packet filter maps a client to one of [`BUCKETS`] buckets; a
//! node accepts a frame when it owns the bucket. Every node computes the
//! table from the membership (the farm's UP nodes and their `power`) and
//! nothing else, so nodes that agree on the membership agree on every bucket
//! without exchanging the table.
//!
//! # Scheme: weighted rendezvous hashing
//! For bucket `b`, every node `n` whose power `w` is above 0 draws
//! `u(n, b)`, uniform in (0, 1), from a hash of its name and `b`, and bids
//! the cost `-log2(u(n, b)) / w`; the lowest cost owns the bucket, and an
//! exact tie goes to the name that sorts first. This is weighted
//! highest-random-weight hashing (owner = argmax of `-w / ln u`) turned
//! upside down: `-ln u` is exponentially distributed, and the smallest of
//! independent `Exp(1) / w_i` is node `i`'s with probability `w_i / Σw`, so
//! each node's expected share of the buckets is its share of the power.
//!
//! A node's cost depends on its own name, its own power and the bucket only,
//! which gives the minimal movement that keeps connections where they are:
//! a node that joins only takes buckets, a node that leaves only gives away
//! its own, and a node whose power changes only gains (more power) or only
//! loses (less), every other bucket staying with its owner.
//!
//! # Determinism
//! Nodes must compute identical tables: a bucket that two nodes see
//! differently is served twice or not at all. The computation therefore uses
//! no floating point, only integer operations that Rust defines identically
//! on every target:
//! - `u(n, b) = (h | 1) / 2^64` where `h` is splitmix64's output function
//!   applied to `seed(n) + (b + 1) · γ` (wrapping), and `seed(n)` is the first
//!   8 bytes, read little-endian, of `blake3::derive_key(SCHEME, name)`;
//! - `-log2(u)` is a fixed-point number with 32 fractional bits computed by
//!   repeated squaring with truncation: a well-defined integer function,
//!   within 2^-30 of the real logarithm;
//! - costs are compared by cross-multiplying in `u128` (`E_a · w_b < E_b ·
//!   w_a`, with `E <= 2^38` and `w < 2^32`), which is exact; a lower bound
//!   from a table skips the logarithm of bidders that cannot win, and cannot
//!   change the result.
//!
//! `f64::ln` would be fast and accurate, but Rust takes it from the
//! platform's libm, which is not required to round correctly: glibc, musl
//! and their versions may differ in the last place, and one ulp at a near
//! tie is enough for two nodes to disagree about a bucket.
//!
//! The scheme ([`SCHEME`], the mix, the fixed-point logarithm, the tie rule)
//! is part of the cluster's consistency contract, like a wire format:
//! changing any of it changes the tables, and nodes of different versions
//! would then disagree. The golden test pins it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// Number of buckets of a farm's table.
pub const BUCKETS: usize = 4096;

/// The most members a table can hold: owner indices are a `u8`, and 255 means "none".
pub const MAX_MEMBERS: usize = 255;

/// The BLAKE3 key-derivation context of the node seeds; changing it changes every table.
pub const SCHEME: &str = "halo farm bucket table v1";

/// Owner index of a bucket that no node owns.
const NO_OWNER: u8 = u8::MAX;

/// Fractional bits of the fixed-point logarithm.
const LOG2_FRACTION_BITS: u32 = 32;

/// splitmix64's increment (2^64 / φ, odd).
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Why a bucket table cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// Owner indices are a `u8`.
    #[error("a farm has at most {MAX_MEMBERS} members, found {0}")]
    TooManyMembers(usize),
}

/// The owner of every bucket, for one membership.
#[derive(Clone, PartialEq, Eq)]
pub struct BucketTable {
    /// Every member, power 0 included, sorted by name.
    members: Vec<Member>,
    /// Index into `members` of each bucket's owner, or [`NO_OWNER`].
    owners: Box<[u8; BUCKETS]>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    name: String,
    power: u32,
}

/// One node's part of a table.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Share<'a> {
    /// The node's name.
    pub node: &'a str,
    /// Its power in the membership.
    pub power: u32,
    /// How many buckets it owns.
    pub buckets: usize,
    /// Those buckets as a percentage of [`BUCKETS`].
    pub percent: f64,
    /// Its power as a percentage of the total: the share it should get on average.
    pub target_percent: f64,
}

/// A bucket whose owner differs between two tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Move<'a> {
    /// The bucket.
    pub bucket: u16,
    /// Its owner in the old table.
    pub from: Option<&'a str>,
    /// Its owner in the new table.
    pub to: Option<&'a str>,
}

impl BucketTable {
    /// The table of a membership (node name → power; power 0 takes no traffic).
    pub fn compute(members: &BTreeMap<String, u32>) -> Result<Self, BucketError> {
        if members.len() > MAX_MEMBERS {
            return Err(BucketError::TooManyMembers(members.len()));
        }
        let members: Vec<Member> = members
            .iter()
            .map(|(name, &power)| Member {
                name: name.clone(),
                power,
            })
            .collect();
        // In name order, so that keeping the first of equal costs breaks ties by name.
        let bidders: Vec<(u8, u64, u32)> = members
            .iter()
            .enumerate()
            .filter(|(_, member)| member.power > 0)
            .map(|(index, member)| (index as u8, node_seed(&member.name), member.power))
            .collect();
        let mut owners = Box::new([NO_OWNER; BUCKETS]);
        for (bucket, owner) in owners.iter_mut().enumerate() {
            let mut best: Option<(u8, Cost)> = None;
            for &(index, seed, power) in &bidders {
                let x = bucket_hash(seed, bucket as u16) | 1;
                if let Some((_, best_cost)) = best {
                    // Most bidders lose by far: a cheap lower bound of their
                    // cost settles it without the exact logarithm.
                    let floor = Cost::new(exponential_floor(x), power);
                    if !floor.below(best_cost) {
                        continue;
                    }
                }
                let cost = Cost::new(exponential(x), power);
                if best.is_none_or(|(_, best_cost)| cost.below(best_cost)) {
                    best = Some((index, cost));
                }
            }
            if let Some((index, _)) = best {
                *owner = index;
            }
        }
        Ok(BucketTable { members, owners })
    }

    /// The owner of `bucket`, if any node has power (`None` too for a bucket beyond [`BUCKETS`]).
    pub fn owner(&self, bucket: u16) -> Option<&str> {
        let index = *self.owners.get(usize::from(bucket))?;
        self.name(index)
    }

    /// The buckets that `node` owns, in increasing order (none for a node not in the table).
    pub fn owned_by<'a>(&'a self, node: &str) -> impl Iterator<Item = u16> + 'a {
        let index = self.index_of(node);
        self.owners
            .iter()
            .enumerate()
            .filter(move |&(_, &owner)| Some(owner) == index)
            .map(|(bucket, _)| bucket as u16)
    }

    /// `node`'s view for the packet filter: 1 for a bucket it owns, 0 otherwise.
    pub fn owned_map(&self, node: &str) -> Box<[u8; BUCKETS]> {
        let mut map = Box::new([0; BUCKETS]);
        for bucket in self.owned_by(node) {
            map[usize::from(bucket)] = 1;
        }
        map
    }

    /// Every member's share, in name order (members of power 0 included).
    pub fn shares(&self) -> Vec<Share<'_>> {
        let mut counts = vec![0usize; self.members.len()];
        for &owner in self.owners.iter() {
            if let Some(count) = counts.get_mut(usize::from(owner)) {
                *count += 1;
            }
        }
        let total_power: u64 = self.members.iter().map(|m| u64::from(m.power)).sum();
        self.members
            .iter()
            .zip(counts)
            .map(|(member, buckets)| Share {
                node: &member.name,
                power: member.power,
                buckets,
                percent: 100.0 * buckets as f64 / BUCKETS as f64,
                target_percent: if total_power == 0 {
                    0.0
                } else {
                    100.0 * f64::from(member.power) / total_power as f64
                },
            })
            .collect()
    }

    /// How many buckets no node owns: all of them when no member has power, else none.
    pub fn unowned(&self) -> usize {
        self.owners.iter().filter(|&&o| o == NO_OWNER).count()
    }

    /// The buckets whose owner changes from this table to `next`, in increasing order.
    ///
    /// A node hands over the buckets it moves `from` (keeping the flows it
    /// already serves in them) and takes the buckets it moves `to`.
    pub fn diff<'a>(&'a self, next: &'a BucketTable) -> Vec<Move<'a>> {
        self.owners
            .iter()
            .zip(next.owners.iter())
            .enumerate()
            .filter_map(|(bucket, (&old, &new))| {
                let (from, to) = (self.name(old), next.name(new));
                (from != to).then_some(Move {
                    bucket: bucket as u16,
                    from,
                    to,
                })
            })
            .collect()
    }

    fn name(&self, index: u8) -> Option<&str> {
        self.members
            .get(usize::from(index))
            .map(|member| member.name.as_str())
    }

    fn index_of(&self, node: &str) -> Option<u8> {
        // Only `MAX_MEMBERS` members, so the index fits and is never `NO_OWNER`.
        self.members
            .binary_search_by(|member| member.name.as_str().cmp(node))
            .ok()
            .map(|index| index as u8)
    }

    /// The one-character mark of each member in the grid, or `None` when
    /// there are more members with power than marks.
    fn marks(&self) -> Option<Vec<Option<char>>> {
        const MARKS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let mut next = MARKS.iter();
        self.members
            .iter()
            .map(|member| match member.power {
                0 => Some(None),
                _ => next.next().map(|&mark| Some(char::from(mark))),
            })
            .collect()
    }
}

/// The table as `halo buckets` prints it: the share of every member, then
/// the owner of every bucket, as a grid of one mark per bucket (64 buckets a
/// row) or, for farms with more members than marks, as ranges.
impl fmt::Display for BucketTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let marks = self.marks();
        let width = self
            .members
            .iter()
            .map(|m| m.name.chars().count())
            .chain([4])
            .max()
            .unwrap_or(4);
        writeln!(
            f,
            "{:<width$}  mark  power  buckets   share  target",
            "node"
        )?;
        for (index, share) in self.shares().iter().enumerate() {
            let mark = marks.as_ref().and_then(|marks| marks[index]).unwrap_or('-');
            writeln!(
                f,
                "{:<width$}  {:<4}  {:>5}  {:>7}  {:>5.1}%  {:>5.1}%",
                share.node, mark, share.power, share.buckets, share.percent, share.target_percent
            )?;
        }
        if self.unowned() == BUCKETS {
            return writeln!(f, "\nno member has a power above 0: no bucket has an owner");
        }
        match marks {
            Some(marks) => {
                writeln!(f, "\nbucket  owner (mark)")?;
                for (row, owners) in self.owners.chunks(64).enumerate() {
                    write!(f, "{:>6} ", row * 64)?;
                    for (column, &owner) in owners.iter().enumerate() {
                        if column % 16 == 0 {
                            write!(f, " ")?;
                        }
                        let mark = marks.get(usize::from(owner)).copied().flatten();
                        write!(f, "{}", mark.unwrap_or('.'))?;
                    }
                    writeln!(f)?;
                }
            }
            None => {
                writeln!(f, "\nbuckets    owner")?;
                let mut start = 0;
                for end in 1..=BUCKETS {
                    if end == BUCKETS || self.owners[end] != self.owners[start] {
                        let range = match end - start {
                            1 => start.to_string(),
                            _ => format!("{start}-{}", end - 1),
                        };
                        let owner = self.name(self.owners[start]).unwrap_or("-");
                        writeln!(f, "{range:<9}  {owner}")?;
                        start = end;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Members, counts and ownership, without the 4096 owners.
impl fmt::Debug for BucketTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BucketTable")
            .field("shares", &self.shares())
            .field("unowned", &self.unowned())
            .finish_non_exhaustive()
    }
}

/// `halo buckets --json`: `{"buckets": 4096, "members": [Share…], "owners":
/// [index into members, or null; 4096]}`.
impl Serialize for BucketTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            buckets: usize,
            members: Vec<Share<'a>>,
            owners: Vec<Option<u8>>,
        }
        Json {
            buckets: BUCKETS,
            members: self.shares(),
            owners: self
                .owners
                .iter()
                .map(|&owner| (owner != NO_OWNER).then_some(owner))
                .collect(),
        }
        .serialize(serializer)
    }
}

/// A node's 64-bit seed: independent of every other member, stable across versions.
fn node_seed(name: &str) -> u64 {
    let key = blake3::derive_key(SCHEME, name.as_bytes());
    let mut seed = [0; 8];
    seed.copy_from_slice(&key[..8]);
    u64::from_le_bytes(seed)
}

/// The node's draw for `bucket`: splitmix64's `bucket + 1`-th output from `seed`.
fn bucket_hash(seed: u64, bucket: u16) -> u64 {
    let mut z = seed.wrapping_add((u64::from(bucket) + 1).wrapping_mul(GAMMA));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A bidder's cost for a bucket, `-log2(u) / power`, kept as a fraction.
#[derive(Clone, Copy)]
struct Cost {
    /// `-log2(u)` in fixed point: at least 1, at most `64 << 32`.
    exponential: u64,
    /// Above 0.
    power: u32,
}

impl Cost {
    fn new(exponential: u64, power: u32) -> Self {
        Cost { exponential, power }
    }

    /// Strictly cheaper than `other`; exact, since both products stay below 2^70.
    fn below(self, other: Cost) -> bool {
        u128::from(self.exponential) * u128::from(other.power)
            < u128::from(other.exponential) * u128::from(self.power)
    }
}

/// `-log2(u)` for `u = x / 2^64` (`x` odd, so `0 < u < 1`), in fixed point.
fn exponential(x: u64) -> u64 {
    (64 << LOG2_FRACTION_BITS) - log2_fixed(x)
}

/// A lower bound of [`exponential`]`(x)`, within 2^-7 of it, from a table.
///
/// [`log2_fixed`] is non-decreasing (its squarings and truncations preserve
/// order), so its value at the next 9-bit mantissa above `x` bounds it, and
/// shifting a number shifts only the integer part of its logarithm.
fn exponential_floor(x: u64) -> u64 {
    let whole = 63 - x.leading_zeros();
    let ceiling = if whole < 8 {
        log2_fixed(x)
    } else {
        let top = (x >> (whole - 8)) as usize & 0xff;
        LOG2_CEILINGS[top] + (u64::from(whole - 8) << LOG2_FRACTION_BITS)
    };
    (64 << LOG2_FRACTION_BITS) - ceiling
}

/// `log2_fixed(257 + j)`: the ceiling of [`log2_fixed`] over `[256 + j, 257 + j)`.
const LOG2_CEILINGS: [u64; 256] = {
    let mut table = [0; 256];
    let mut j = 0;
    while j < 256 {
        table[j] = log2_fixed(257 + j as u64);
        j += 1;
    }
    table
};

/// `log2(x)` for `x >= 1`, with [`LOG2_FRACTION_BITS`] fractional bits,
/// never above the real logarithm and within 2^-30 of it.
///
/// The integer part is the position of the top bit; each fractional bit comes
/// from squaring the mantissa (in [1, 2), 63 fractional bits): a square of 2
/// or more means the bit is 1, and the square is halved back into [1, 2).
const fn log2_fixed(x: u64) -> u64 {
    debug_assert!(x >= 1, "log2 of 0");
    let shift = x.leading_zeros();
    let whole = (63 - shift) as u64;
    let mut mantissa = x << shift;
    let mut fraction = 0u64;
    let mut bit = 0;
    while bit < LOG2_FRACTION_BITS {
        let square = (mantissa as u128 * mantissa as u128) >> 63;
        fraction <<= 1;
        if square >> 64 != 0 {
            fraction |= 1;
            mantissa = (square >> 1) as u64;
        } else {
            mantissa = square as u64;
        }
        bit += 1;
    }
    (whole << LOG2_FRACTION_BITS) | fraction
}

#[cfg(test)]
mod tests;
