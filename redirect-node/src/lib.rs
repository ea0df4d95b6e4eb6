//! Where a pod lives on the node, as the agent finds it: its cgroup v2
//! group (`cgroup`) and its network namespace (`netns`: addresses, routes
//! and listening sockets read, changes followed, the hand-over route and
//! `lo`'s alias written, all over netlink). It knows nothing of the agent,
//! its pods or the mesh, and Cargo holds it to that.

pub mod cgroup;
pub mod netns;
