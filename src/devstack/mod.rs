//! Development support: what `prismctl local` and the tests run the
//! project on. Nothing here is part of a daemon.
//!
//! - `cluster`: a PostgreSQL cluster of its own, in a directory;
//! - `fleet`: a fleet of hosts on one machine: a manager per host, mutual
//!   TLS between them, PostgreSQL on a host of its own;
//! - `faults`: partitions, delays and healing of a fleet's hosts;
//! - `net`: hosts in network namespaces on a bridge of their own, and the
//!   faults a network has (partitions, one way or both, and delay);
//! - `netem`: the delay itself, a netfilter queue that releases packets late.

pub mod cluster;
pub mod faults;
pub mod fleet;
pub mod net;
pub mod netem;
