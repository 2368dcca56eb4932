//! Smoke tests of the kernel programs, loaded into the real kernel and fed
//! by real processes and frames in the lab.

mod capture;
mod farm_counts;
mod farm_policy;
mod farm_random_frames;
