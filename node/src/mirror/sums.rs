//! Block checksums: how a resynchronisation finds the blocks that differ
//! without sending the data.

use std::{fs::File, io, os::unix::fs::FileExt as _};

use super::wire::{Blocks, BLOCK_SIZE, SUM_LEN};

/// The checksum of one block: BLAKE3, truncated to 128 bits (a collision
/// between a block and its own older version is not a practical concern).
pub fn block_sum(data: &[u8]) -> [u8; SUM_LEN] {
    blake3::hash(data).as_bytes()[..SUM_LEN]
        .try_into()
        .expect("16 of 32 bytes")
}

/// How many blocks a file of `size` bytes has.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE)
}

/// Checksums of blocks `first..first + count` of a file of `size` bytes.
pub fn file_sums(file: &File, size: u64, first: u64, count: u64) -> io::Result<Vec<[u8; SUM_LEN]>> {
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    (first..first + count)
        .map(|block| {
            let start = block * BLOCK_SIZE;
            let len = BLOCK_SIZE.min(size.saturating_sub(start)) as usize;
            file.read_exact_at(&mut buf[..len], start)?;
            Ok(block_sum(&buf[..len]))
        })
        .collect()
}

/// The blocks among `first..first + sums.len()` whose content in `file`
/// (already `size` bytes long) differs from `sums`.
pub fn differing_blocks(
    file: &File,
    size: u64,
    first: u64,
    sums: &[[u8; SUM_LEN]],
) -> io::Result<Vec<Blocks>> {
    let last = block_count(size);
    let count = (sums.len() as u64).min(last.saturating_sub(first));
    let ours = file_sums(file, size, first, count)?;
    Ok(ranges(
        (0..count)
            .filter(|i| ours[*i as usize] != sums[*i as usize])
            .map(|i| first + i),
    ))
}

/// Coalesces increasing block numbers into ranges.
pub fn ranges(blocks: impl IntoIterator<Item = u64>) -> Vec<Blocks> {
    let mut out: Vec<Blocks> = Vec::new();
    for block in blocks {
        match out.last_mut() {
            Some(last) if last.first + u64::from(last.count) == block && last.count < u32::MAX => {
                last.count += 1
            }
            _ => out.push(Blocks {
                first: block,
                count: 1,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_coalesce_neighbours() {
        let r = ranges([1, 2, 3, 7, 9, 10]);
        assert_eq!(
            r,
            vec![
                Blocks { first: 1, count: 3 },
                Blocks { first: 7, count: 1 },
                Blocks { first: 9, count: 2 }
            ]
        );
        assert!(ranges([]).is_empty());
    }

    #[test]
    fn only_changed_blocks_differ() {
        let dir = std::env::temp_dir().join(format!("halo-sums-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let size = 5 * BLOCK_SIZE + 100;
        let mut data = vec![7u8; size as usize];
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let sums = file_sums(&file, size, 0, block_count(size)).unwrap();
        assert_eq!(sums.len(), 6);
        assert!(differing_blocks(&file, size, 0, &sums).unwrap().is_empty());
        data[(2 * BLOCK_SIZE + 5) as usize] = 1;
        data[(size - 1) as usize] = 1;
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        assert_eq!(
            differing_blocks(&file, size, 0, &sums).unwrap(),
            vec![Blocks { first: 2, count: 1 }, Blocks { first: 5, count: 1 }]
        );
        // A window of the sums compares only its blocks.
        assert_eq!(
            differing_blocks(&file, size, 3, &sums[3..]).unwrap(),
            vec![Blocks { first: 5, count: 1 }]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
