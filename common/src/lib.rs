//! Types shared by halo's kernel programs and its daemon.
//!
//! Everything here crosses the user/kernel boundary through maps, ring buffers
//! or load-time globals, so every type is `#[repr(C)]`, made of explicit-width
//! integers, and padded by hand (STYLE.md).
#![no_std]

pub mod capture;
pub mod farm;
