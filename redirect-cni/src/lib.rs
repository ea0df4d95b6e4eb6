//! `fsm-redirect-cni`, a chained CNI plugin: on ADD, before any container
//! of the pod starts, it hands the pod to the agent over the control socket
//! and returns once the agent has enrolled it (or said that FSM does not
//! mesh it); on DEL it has the agent remove it. The previous plugin's
//! result goes through unchanged.
//!
//! A crate of its own because it is copied onto every node and exec'd at
//! every pod start: it holds what the plugin needs and what the agent must
//! agree with it on, nothing of the agent's.
//!
//! - `spec`: the CNI wire format.
//! - `wire`: the plugin's requests to the agent and their answers.
//! - `client`: one request over the agent's control socket.
//! - `plugin`: the plugin's commands (the binary's whole logic).

pub mod client;
pub mod plugin;
pub mod spec;
pub mod wire;
