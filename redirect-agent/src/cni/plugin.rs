//! The plugin's commands, as `fsm-redirect-cni` runs them: each asks the
//! agent over its control socket.

use super::{
    CniAdd, CniAdded,
    spec::{self, CniError, Command, Env, KubernetesPod, NetConf, code},
};
use crate::control::{Client, Unanswered, Unreachable};

/// One invocation: what to print on stdout on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    if env.command == Command::Version {
        return Ok(spec::version_info(stdin));
    }
    let conf = NetConf::parse(stdin)?;
    let client =
        Client::at(conf.socket.clone().unwrap_or_else(|| crate::state::State::socket(std::path::Path::new(crate::state::DEFAULT_DIR))))
            .with_timeout(std::time::Duration::from_secs(match env.command {
                // Only to say, on stderr, whether the agent answers.
                Command::Status => 2,
                _ => conf.timeout_seconds.max(1),
            }));
    conf.supports(env.command)?;
    // The mesh never holds these: nothing to ask the agent, which may be
    // down, hung or behind without holding back the node's own pods.
    if let Some(pod) = env.kubernetes_pod().filter(|p| conf.exclude_namespaces.contains(&p.namespace)) {
        if env.command == Command::Add {
            eprintln!("fsm-redirect: pod {}: namespace {} is excluded (excludeNamespaces): left alone", pod.key(), pod.namespace);
            return spec::pass_through(&conf);
        }
        return Ok(String::new());
    }
    match env.command {
        Command::Add => add(env, &conf, &client),
        Command::Del => del(env, &client).map(|()| String::new()),
        Command::Check => check(env, &client).map(|()| String::new()),
        Command::Status => status(&client).map(|()| String::new()),
        Command::Gc => gc(&conf, &client).map(|()| String::new()),
        Command::Version => unreachable!("answered above"),
    }
}

/// Ready whatever the agent's state: a failing STATUS marks the node's
/// network not ready (containerd 2), which would hold back every pod of
/// the node, where an agent that is down only fails meshed pods' ADDs
/// (they are retried).
fn status(client: &Client) -> Result<(), CniError> {
    if let Err(e) = client.status() {
        eprintln!("fsm-redirect: the agent can't be asked ({e:#}): meshed pods' ADDs fail until it answers; other pods are not held back");
    }
    Ok(())
}

/// Has the agent remove the pods enrolled by ADDs of sandboxes the runtime
/// no longer has. An agent that can't be reached removes them itself once
/// their network namespaces are gone.
fn gc(conf: &NetConf, client: &Client) -> Result<(), CniError> {
    let valid: Vec<String> = conf.valid_attachments.iter().map(|a| a.container_id.clone()).collect();
    match client.cni_gc(valid) {
        Ok(removed) => {
            if !removed.is_empty() {
                eprintln!("fsm-redirect: GC removed {}", removed.join(", "));
            }
            Ok(())
        }
        Err(e) if unreachable(&e) => {
            eprintln!("fsm-redirect: GC: the agent can't be reached ({e:#}); it removes pods once their netns is gone");
            Ok(())
        }
        Err(e) => Err(CniError::new(code::GC_FAILED, "the fsm-redirect agent failed to collect garbage", format!("{e:#}"))),
    }
}

fn add(env: &Env, conf: &NetConf, client: &Client) -> Result<String, CniError> {
    // Checked first: a misplaced plugin fails whatever the agent says.
    let result = spec::pass_through(conf)?;
    // FSM meshes Kubernetes pods only: a container another client runs
    // through the node's network (`ctr run --cni`, nerdctl) has no pod
    // in CNI_ARGS, and its network is none of our business.
    let Some(pod) = env.kubernetes_pod() else {
        eprintln!("fsm-redirect: container {} is not a Kubernetes pod (no K8S_POD_* in CNI_ARGS): left alone", env.container_id);
        return Ok(result);
    };
    let request = CniAdd {
        container_id: env.container_id.clone(),
        netns: env.netns.clone().expect("required for ADD"),
        pod: pod.clone(),
        ips: conf.pod_ips(),
        annotations: conf.runtime_config.pod_annotations.clone(),
    };
    match client.cni_add(request) {
        Ok(CniAdded::Enrolled { id, dataplane }) => {
            eprintln!("fsm-redirect: pod {} enrolled as {id} ({dataplane:?})", pod.key());
            Ok(result)
        }
        Ok(CniAdded::NotMeshed { why }) => {
            eprintln!("fsm-redirect: pod {} left alone: {why}", pod.key());
            Ok(result)
        }
        Err(e) if conf.fail_open => {
            eprintln!("fsm-redirect: pod {} NOT intercepted (failOpen): {e:#}", pod.key());
            Ok(result)
        }
        // Its fsm-init, guarded, finds no mark of the agent's and applies
        // FSM's rules: the pod starts intercepted, by fsm-init.
        Err(e) if unreachable(&e) && guarded(conf) => {
            eprintln!("fsm-redirect: pod {}: the agent can't be reached ({e:#}); its guarded fsm-init applies FSM's rules", pod.key());
            Ok(result)
        }
        Err(e) => Err(agent_error(&pod, e)),
    }
}

/// Whether the runtime says the pod's fsm-init is guarded
/// (`crate::injection::GUARD_ANNOTATION`).
fn guarded(conf: &NetConf) -> bool {
    let (key, value) = crate::injection::GUARD_ANNOTATION;
    conf.runtime_config.pod_annotations.as_ref().is_some_and(|a| a.get(key).is_some_and(|v| v == value))
}

/// Whether the agent could not be asked at all, or gave no answer in time.
fn unreachable(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Unreachable>().is_some() || e.downcast_ref::<Unanswered>().is_some()
}

/// Unreachable or silent agent: try again later; a refusal: ours, with why.
fn agent_error(pod: &KubernetesPod, e: anyhow::Error) -> CniError {
    let text = format!("{e:#}");
    if let Some(silent) = e.downcast_ref::<Unanswered>() {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!("pod {}: the fsm-redirect agent did not answer within {} s", pod.key(), silent.0.as_secs()),
            text,
        )
    } else if unreachable(&e) {
        CniError::new(code::TRY_AGAIN_LATER, format!("pod {}: the fsm-redirect agent can't be reached", pod.key()), text)
    } else {
        CniError::new(code::ENROLMENT_REFUSED, format!("pod {}: the fsm-redirect agent refused it", pod.key()), text)
    }
}

/// Succeeds when there is nothing to remove (the spec: DEL may come
/// twice, or after a failed ADD), and when the agent can't be reached:
/// failing would stop the runtime's DEL before the other plugins free the
/// pod's interface and address, and hold the pod's deletion until the
/// agent is back, while the agent removes a pod whose netns is gone at its
/// next refresh anyway. An agent that fails to remove the pod is an error.
fn del(env: &Env, client: &Client) -> Result<(), CniError> {
    // Not a pod: its ADD enrolled nothing.
    if env.kubernetes_pod().is_none() {
        return Ok(());
    }
    match client.cni_del(&env.container_id) {
        Ok(_) => Ok(()),
        Err(e) if unreachable(&e) => {
            eprintln!("fsm-redirect: container {}: agent unreachable ({e:#}); it removes the pod once its netns is gone", env.container_id);
            Ok(())
        }
        Err(e) => Err(CniError::new(
            code::ENROLMENT_REFUSED,
            format!("container {}: the fsm-redirect agent failed to remove it", env.container_id),
            format!("{e:#}"),
        )),
    }
}

/// A meshed pod must be enrolled with its programs attached.
fn check(env: &Env, client: &Client) -> Result<(), CniError> {
    let Some(pod) = env.kubernetes_pod() else { return Ok(()) };
    client
        .cni_check(&env.container_id, &pod)
        .map_err(|e| CniError::new(code::NOT_INTERCEPTED, format!("pod {}: not intercepted", pod.key()), format!("{e:#}")))
}
