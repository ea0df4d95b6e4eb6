//! The pod's object: the programs whose hook has no cgroup storage to say
//! which pod runs them, loaded once per pod with its `POD_ID` (see
//! `main.rs`, the node's object). Built apart from the node's so that a
//! pod's load reads, relocates and links three programs, not every
//! program of the node's with them.
//!
//! - `sk_lookup` (on the pod's network namespace) decides each arriving
//!   connection (the inbound table) and hands redirected ones to the
//!   proxy's inbound listener.
//! - `sockops` registers the proxy's inbound listener and, with `sk_msg`,
//!   is the fast path of local hops (fast_path.rs); attached only while a
//!   pod needs it.
#![no_std]
#![no_main]

// The modules shared with the node's object: this one uses a part of each.
mod fast_path;
#[allow(dead_code)]
mod fields;
mod instance;
#[allow(dead_code)]
mod maps;
mod policy;
mod sk_lookup;
mod sockops;

use instance::own_pod_id;
