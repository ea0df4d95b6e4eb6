//! The plugin's commands, as `fsm-redirect-cni` runs them: each asks the
//! agent over its control socket.

use std::{path::PathBuf, time::Duration};

use crate::{
    client::{CallError, call},
    spec::{self, CniError, Command, Env, KubernetesPod, NetConf, code},
    wire::{CniAdd, CniAdded, CniReply, CniRequest, DEFAULT_SOCKET, GUARD_ANNOTATION},
};

/// The agent, as this invocation asks it.
struct Agent {
    socket: PathBuf,
    timeout: Duration,
}

impl Agent {
    fn ask(&self, request: CniRequest) -> Result<CniReply, CallError> {
        call(&self.socket, Some(self.timeout), &request)
    }

    fn add(&self, add: CniAdd) -> Result<CniAdded, CallError> {
        match self.ask(CniRequest::CniAdd { add })? {
            CniReply::CniAdded(added) => Ok(added),
            other => Err(out_of_turn(other)),
        }
    }

    fn del(&self, container_id: &str) -> Result<bool, CallError> {
        match self.ask(CniRequest::CniDel { container_id: container_id.to_owned() })? {
            CniReply::CniDeleted { removed } => Ok(removed),
            other => Err(out_of_turn(other)),
        }
    }

    fn check(&self, container_id: &str, pod: &KubernetesPod) -> Result<(), CallError> {
        match self.ask(CniRequest::CniCheck { container_id: container_id.to_owned(), pod: pod.clone() })? {
            CniReply::CniChecked => Ok(()),
            other => Err(out_of_turn(other)),
        }
    }

    /// The pods removed.
    fn gc(&self, valid: Vec<String>) -> Result<Vec<String>, CallError> {
        match self.ask(CniRequest::CniGc { valid })? {
            CniReply::CniCollected { removed } => Ok(removed),
            other => Err(out_of_turn(other)),
        }
    }
}

/// An answer that is not the request's (an agent of another protocol).
fn out_of_turn(reply: CniReply) -> CallError {
    CallError::Broken(format!("the agent answered out of turn: {reply:?}"))
}

/// One invocation: what to print on stdout on success.
pub fn run(env: &Env, stdin: &[u8]) -> Result<String, CniError> {
    if env.command == Command::Version {
        return Ok(spec::version_info(stdin));
    }
    let conf = NetConf::parse(stdin)?;
    let client = Agent {
        socket: conf.socket.clone().unwrap_or_else(|| DEFAULT_SOCKET.into()),
        timeout: Duration::from_secs(match env.command {
            // Only to say, on stderr, whether the agent answers.
            Command::Status => 2,
            _ => conf.timeout_seconds.max(1),
        }),
    };
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
fn status(client: &Agent) -> Result<(), CniError> {
    // The agent's own status request: its answer is only waited for, never
    // read (its types are the agent's).
    let asked = call::<_, serde::de::IgnoredAny>(&client.socket, Some(client.timeout), &serde_json::json!({"request": "status"}));
    if let Some(e) = asked.err().filter(CallError::is_unreachable) {
        eprintln!("fsm-redirect: the agent can't be asked ({e}): meshed pods' ADDs fail until it answers; other pods are not held back");
    }
    Ok(())
}

/// Has the agent remove the pods enrolled by ADDs of sandboxes the runtime
/// no longer has. An agent that can't be reached removes them itself once
/// their network namespaces are gone.
fn gc(conf: &NetConf, client: &Agent) -> Result<(), CniError> {
    let valid: Vec<String> = conf.valid_attachments.iter().map(|a| a.container_id.clone()).collect();
    match client.gc(valid) {
        Ok(removed) => {
            if !removed.is_empty() {
                eprintln!("fsm-redirect: GC removed {}", removed.join(", "));
            }
            Ok(())
        }
        Err(e) if e.is_unreachable() => {
            eprintln!("fsm-redirect: GC: the agent can't be reached ({e}); it removes pods once their netns is gone");
            Ok(())
        }
        Err(e) => Err(CniError::new(code::GC_FAILED, "the fsm-redirect agent failed to collect garbage", e.to_string())),
    }
}

fn add(env: &Env, conf: &NetConf, client: &Agent) -> Result<String, CniError> {
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
    match client.add(request) {
        Ok(CniAdded::Enrolled { id, dataplane, note }) => {
            eprintln!("fsm-redirect: pod {} enrolled as {id} ({dataplane})", pod.key());
            if let Some(note) = note {
                eprintln!("fsm-redirect: pod {}: {note}", pod.key());
            }
            Ok(result)
        }
        Ok(CniAdded::NotMeshed { why }) => {
            eprintln!("fsm-redirect: pod {} left alone: {why}", pod.key());
            Ok(result)
        }
        Err(e) if conf.fail_open => {
            eprintln!("fsm-redirect: pod {} NOT intercepted (failOpen): {e}", pod.key());
            Ok(result)
        }
        // Its fsm-init, guarded, finds no mark of the agent's and applies
        // FSM's rules: the pod starts intercepted, by fsm-init.
        Err(e) if e.is_unreachable() && guarded(conf) => {
            eprintln!("fsm-redirect: pod {}: the agent can't be reached ({e}); its guarded fsm-init applies FSM's rules", pod.key());
            Ok(result)
        }
        Err(e) => Err(agent_error(&pod, e)),
    }
}

/// Whether the runtime says the pod's fsm-init is guarded
/// ([`GUARD_ANNOTATION`]).
fn guarded(conf: &NetConf) -> bool {
    let (key, value) = GUARD_ANNOTATION;
    conf.runtime_config.pod_annotations.as_ref().is_some_and(|a| a.get(key).is_some_and(|v| v == value))
}

/// Unreachable or silent agent: try again later; a refusal: ours, with why.
fn agent_error(pod: &KubernetesPod, e: CallError) -> CniError {
    let text = e.to_string();
    match e {
        CallError::Unanswered(limit) => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("pod {}: the fsm-redirect agent did not answer within {} s", pod.key(), limit.as_secs()),
            text,
        ),
        CallError::Unreachable(_) => {
            CniError::new(code::TRY_AGAIN_LATER, format!("pod {}: the fsm-redirect agent can't be reached", pod.key()), text)
        }
        CallError::Refused(_) | CallError::Broken(_) => {
            CniError::new(code::ENROLMENT_REFUSED, format!("pod {}: the fsm-redirect agent refused it", pod.key()), text)
        }
    }
}

/// Succeeds when there is nothing to remove (the spec: DEL may come
/// twice, or after a failed ADD), and when the agent can't be reached:
/// failing would stop the runtime's DEL before the other plugins free the
/// pod's interface and address, and hold the pod's deletion until the
/// agent is back, while the agent removes a pod whose netns is gone at its
/// next refresh anyway. An agent that fails to remove the pod is an error.
fn del(env: &Env, client: &Agent) -> Result<(), CniError> {
    // Not a pod: its ADD enrolled nothing.
    if env.kubernetes_pod().is_none() {
        return Ok(());
    }
    match client.del(&env.container_id) {
        Ok(_) => Ok(()),
        Err(e) if e.is_unreachable() => {
            eprintln!("fsm-redirect: container {}: agent unreachable ({e}); it removes the pod once its netns is gone", env.container_id);
            Ok(())
        }
        Err(e) => Err(CniError::new(
            code::ENROLMENT_REFUSED,
            format!("container {}: the fsm-redirect agent failed to remove it", env.container_id),
            e.to_string(),
        )),
    }
}

/// A meshed pod must be enrolled with its programs attached.
fn check(env: &Env, client: &Agent) -> Result<(), CniError> {
    let Some(pod) = env.kubernetes_pod() else { return Ok(()) };
    client
        .check(&env.container_id, &pod)
        .map_err(|e| CniError::new(code::NOT_INTERCEPTED, format!("pod {}: not intercepted", pod.key()), e.to_string()))
}
