//! Unmodified proxies and tools on both dataplanes: Debian's HAProxy (IPv4,
//! and IPv4-mapped, which is IPv4 on the wire; HAProxy asks
//! `SO_ORIGINAL_DST` on AF_INET sockets only) and Envoy from PyPI, with
//! curl as the application. (The differential table runs whole with Envoy
//! as the sidecar too.)

use std::process::Command;

use tests::{
    APP_UID, HTTP_PORT, Node, PROXY_UID, Pod,
    sidecar::{Envoy, Haproxy, curl},
};

const MESH: &str = "spec:\n  traffic:\n    outboundIPRangeExclusionList: [10.97.0.0/16, fd00:97::/32]\n";

/// curl from the node namespace (another host).
fn curl_from_node(node: &Node) -> Command {
    let mut cmd = Command::new("curl");
    redirect_agent::sandbox::enter_netns(&mut cmd, &node.ns.path()).unwrap();
    cmd
}

#[test]
fn haproxy_gets_the_original_destination_of_ipv4_and_mapped_connections() {
    let node = Node::start(MESH).unwrap();
    for dataplane in ["iptables", "ebpf"] {
        let mut pod = Pod::wired(&node, false).unwrap();
        pod.start_app("http", PROXY_UID).unwrap();
        let _haproxy = Haproxy::start(&mut pod).unwrap();
        node.enroll_with(&pod, &[], &["--dataplane", dataplane]).unwrap();
        for url in [format!("http://10.96.0.10:{HTTP_PORT}/"), format!("http://[::ffff:10.96.0.10]:{HTTP_PORT}/")] {
            let r = curl(pod.command("curl", APP_UID), &url).unwrap();
            assert_eq!(r.header("x-proxy"), Some("haproxy-out"), "{dataplane}: {url}: {r:?}");
            assert_eq!(r.body, format!("direct 10.96.0.10:{HTTP_PORT}"), "{dataplane}: {url}");
        }
        // Excluded: straight to the destination.
        let r = curl(pod.command("curl", APP_UID), &format!("http://[::ffff:10.97.0.10]:{HTTP_PORT}/")).unwrap();
        assert_eq!((r.header("x-proxy"), r.header("server")), (None, Some("netprobe")), "{dataplane}: {r:?}");
        // Inbound, from another host, through HAProxy to the app.
        let r = curl(curl_from_node(&node), &format!("http://{}:8080/", pod.ip)).unwrap();
        assert_eq!((r.header("x-proxy"), r.body.as_str()), (Some("haproxy-in"), "app 127.0.0.1:8080"), "{dataplane}: {r:?}");
    }
}

#[test]
fn curl_through_envoy_ipv4_mapped_and_ipv6_outbound_and_inbound() {
    let node = Node::start(MESH).unwrap();
    for dataplane in ["iptables", "ebpf"] {
        let mut pod = Pod::wired(&node, true).unwrap();
        pod.start_app("http", PROXY_UID).unwrap();
        let mut envoy = Envoy::start(&mut pod).unwrap();
        node.enroll_with(&pod, &[], &["--dataplane", dataplane]).unwrap();
        // The report: an IPv6 socket dialling a mapped address reached its
        // destination around the sidecar.
        for (url, dst) in [
            (format!("http://[::ffff:10.96.0.10]:{HTTP_PORT}/"), format!("10.96.0.10:{HTTP_PORT}")),
            (format!("http://10.96.0.10:{HTTP_PORT}/"), format!("10.96.0.10:{HTTP_PORT}")),
            (format!("http://[fd00:96::10]:{HTTP_PORT}/"), format!("[fd00:96::10]:{HTTP_PORT}")),
        ] {
            let r = curl(pod.command("curl", APP_UID), &url).unwrap();
            assert_eq!(r.body, format!("direct {dst}"), "{dataplane}: {url}");
            assert_eq!(envoy.new_records(), [format!("out {dst} {dst}")], "{dataplane}: {url}: Envoy's record");
        }
        for url in [format!("http://[::ffff:10.97.0.10]:{HTTP_PORT}/"), format!("http://[fd00:97::10]:{HTTP_PORT}/")] {
            curl(pod.command("curl", APP_UID), &url).unwrap();
            assert!(envoy.new_records().is_empty(), "{dataplane}: {url} is excluded");
        }
        let ip6 = pod.ip6.clone().unwrap();
        for (url, orig) in
            [(format!("http://{}:8080/", pod.ip), format!("{}:8080", pod.ip)), (format!("http://[{ip6}]:8080/"), format!("[{ip6}]:8080"))]
        {
            let r = curl(curl_from_node(&node), &url).unwrap();
            assert_eq!(r.body, "app 127.0.0.1:8080", "{dataplane}: {url}");
            assert_eq!(envoy.new_records(), [format!("in {orig} 127.0.0.1:8080")], "{dataplane}: {url}: Envoy's record");
        }
    }
}
