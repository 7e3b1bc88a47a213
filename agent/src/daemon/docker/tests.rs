use super::*;
use crate::config::IngressFallback;
use crate::daemon::spec::tests::PROXY;

const ARN: &str = "arn:aws:ecs:us-west-2:123456789012:task/prod/0123456789abcdef";

fn container(name: &str, pid: u32, network_mode: &str, labels: &[(&str, &str)], env: &[&str]) -> Container {
    let mut all: HashMap<String, String> = HashMap::from([
        (TASK_ARN.to_owned(), ARN.to_owned()),
        (CONTAINER_NAME.to_owned(), name.to_owned()),
        (FAMILY.to_owned(), "serviceB".to_owned()),
        (REVISION.to_owned(), "7".to_owned()),
    ]);
    all.extend(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    Container {
        id: format!("{name}-id"),
        name: name.to_owned(),
        pid,
        labels: all,
        env: env.iter().map(|e| (*e).to_owned()).collect(),
        network_mode: network_mode.to_owned(),
        cgroup: Some(format!("/ecs/0123456789abcdef/{name}-id")),
        cgroup_parent: "/ecs/0123456789abcdef".to_owned(),
    }
}

/// An awsvpc task: the pause container, the proxy, the app.
fn awsvpc(proxy_labels: &[(&str, &str)], proxy_env: &[&str]) -> DockerTask {
    let tasks = group([
        container(PAUSE, 100, "none", &[], &[]),
        container("envoy", 200, "container:pause-id", proxy_labels, proxy_env),
        container("app", 300, "container:pause-id", &[], &[]),
    ]);
    tasks.into_values().next().unwrap()
}

#[test]
fn containers_are_grouped_into_tasks_by_their_arn() {
    let mut other = container("app", 400, "none", &[], &[]);
    other.labels.insert(TASK_ARN.into(), "arn:aws:ecs:us-west-2:123456789012:task/prod/fedcba".into());
    let mut unlabelled = container("x", 500, "none", &[], &[]);
    unlabelled.labels.remove(TASK_ARN);
    let tasks =
        group([container("envoy", 200, "none", &[], &[]), other, unlabelled, container(PAUSE, 100, "none", &[], &[])]);
    assert_eq!(tasks.keys().collect::<Vec<_>>(), ["0123456789abcdef", "fedcba"]);
    let task = &tasks["0123456789abcdef"];
    assert_eq!((task.family.as_str(), task.revision.as_str(), task.arn.as_str()), ("serviceB", "7", ARN));
    assert_eq!(task.containers.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["envoy", PAUSE]);
}

#[test]
fn the_label_makes_a_spec_in_the_pause_containers_namespace_and_the_tasks_cgroup() {
    let task = awsvpc(&[(PROXY_CONFIGURATION, PROXY), (BACKEND, "ebpf"), (INSTALL_WHEN, "proxy-live")], &[]);
    let spec = spec_of(&task, &[], Kind::Iptables).unwrap().unwrap();
    assert_eq!(spec.id, "0123456789abcdef");
    assert_eq!(spec.netns, Some(PathBuf::from("/proc/100/ns/net")));
    assert_eq!(spec.cgroup, "/ecs/0123456789abcdef");
    assert_eq!(spec.backend, Kind::Ebpf);
    assert_eq!(spec.install_when, Some(InstallWhen::ProxyLive));
    assert_eq!(spec.config.proxy_egress_port, 15001);
    assert_eq!(spec.proxy_admin_url, readiness::DEFAULT_ADMIN_URL);
}

#[test]
fn without_the_label_the_proxys_appmesh_environment_is_read_and_the_default_backend_used() {
    let env = ["APPMESH_IGNORE_UID=1337", "APPMESH_ENVOY_EGRESS_PORT=15001", "PATH=/bin"];
    let spec = spec_of(&awsvpc(&[], &env), &[], Kind::Nftables).unwrap().unwrap();
    assert_eq!(
        (spec.backend, spec.config.ignored_uids.first().copied(), spec.config.proxy_egress_port),
        (Kind::Nftables, Some(1337), 15001)
    );
}

/// IngressFallback travels with the rest of the configuration: a property of the label's
/// proxyConfiguration, or the proxy's APPMESH_INGRESS_FALLBACK; a bad value is named.
#[test]
fn the_ingress_fallback_comes_with_the_configuration() {
    let with = |value: &str| PROXY.replace("]}", &format!(r#", {{"name": "IngressFallback", "value": "{value}"}}]}}"#));
    let cases: [(DockerTask, Result<IngressFallback, &str>); 5] = [
        (awsvpc(&[(PROXY_CONFIGURATION, PROXY)], &[]), Ok(IngressFallback::Refuse)),
        (awsvpc(&[(PROXY_CONFIGURATION, &with("app"))], &[]), Ok(IngressFallback::App)),
        (
            awsvpc(
                &[],
                &["APPMESH_IGNORE_UID=1337", "APPMESH_ENVOY_EGRESS_PORT=15001", "APPMESH_INGRESS_FALLBACK=app"],
            ),
            Ok(IngressFallback::App),
        ),
        (
            awsvpc(&[(PROXY_CONFIGURATION, &with("to-app"))], &[]),
            Err(r#"IngressFallback = "to-app": invalid ingress fallback"#),
        ),
        (
            awsvpc(&[], &["APPMESH_IGNORE_UID=1337", "APPMESH_ENVOY_EGRESS_PORT=15001", "APPMESH_INGRESS_FALLBACK=on"]),
            Err(r#"APPMESH_INGRESS_FALLBACK = "on": invalid ingress fallback: must be refuse or app"#),
        ),
    ];
    for (task, want) in cases {
        match (spec_of(&task, &[], Kind::Ebpf), want) {
            (Ok(Some(spec)), Ok(want)) => assert_eq!(spec.config.ingress_fallback, want),
            (Err(problem), Err(want)) => assert!(problem.contains(want), "{problem}"),
            (got, want) => panic!("{got:?}, wanted {want:?}"),
        }
    }
}

#[test]
fn a_task_that_asks_for_nothing_is_left_alone() {
    assert_eq!(spec_of(&awsvpc(&[], &["PATH=/bin"]), &[], Kind::Iptables), Ok(None));
}

#[test]
fn bad_labels_are_named_with_their_problem_all_at_once() {
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Labels, &[&str]); 4] = [
        (&[(PROXY_CONFIGURATION, "{not json")], &["label intercept.proxy-configuration"]),
        (
            &[(PROXY_CONFIGURATION, PROXY), (BACKEND, "bpf"), (INSTALL_WHEN, "later")],
            &["label intercept.backend = \"bpf\"", "label intercept.install-when = \"later\""],
        ),
        (&[(PROXY_CONFIGURATION, PROXY), (PROXY_ADMIN_URL, "https://x/")], &["label intercept.proxy-admin-url"]),
        (
            &[(
                PROXY_CONFIGURATION,
                r#"{"type": "APPMESH", "properties": [{"name": "ProxyEgressPort", "value": "99999"}]}"#,
            )],
            &["label intercept.proxy-configuration", "99999"],
        ),
    ];
    for (labels, wanted) in cases {
        let problem = spec_of(&awsvpc(labels, &[]), &[], Kind::Iptables).unwrap_err();
        for want in wanted {
            assert!(problem.contains(want), "{labels:?}: {problem}");
        }
    }
}

#[test]
fn labels_that_disagree_between_containers_are_refused() {
    let mut task = awsvpc(&[(PROXY_CONFIGURATION, PROXY), (BACKEND, "ebpf")], &[]);
    task.containers[0].labels.insert(BACKEND.into(), "nftables".into());
    let problem = spec_of(&task, &[], Kind::Iptables).unwrap_err();
    assert!(problem.contains("label intercept.backend differs between containers"), "{problem}");
}

#[test]
fn host_and_bridge_networking_are_refused_a_single_namespace_is_taken() {
    let labels = [(PROXY_CONFIGURATION, PROXY)];
    let host = group([container("envoy", 200, "host", &labels, &[])]).into_values().next().unwrap();
    assert!(spec_of(&host, &[], Kind::Iptables).unwrap_err().contains("network mode host"));
    let bridge = group([container("envoy", 200, "bridge", &labels, &[]), container("app", 300, "bridge", &[], &[])])
        .into_values()
        .next()
        .unwrap();
    assert!(spec_of(&bridge, &[], Kind::Iptables).unwrap_err().contains("2 network namespaces of their own"));
    let shared =
        group([container("envoy", 200, "bridge", &labels, &[]), container("app", 300, "container:envoy-id", &[], &[])])
            .into_values()
            .next()
            .unwrap();
    assert_eq!(spec_of(&shared, &[], Kind::Iptables).unwrap().unwrap().netns, Some(PathBuf::from("/proc/200/ns/net")));
}

#[test]
fn the_cgroup_is_the_common_parent_and_ebpf_needs_one() {
    let mut task = awsvpc(&[(PROXY_CONFIGURATION, PROXY), (BACKEND, "ebpf")], &[]);
    assert_eq!(cgroup_of(&task, &[]).as_deref(), Ok("/ecs/0123456789abcdef"));
    task.containers[2].cgroup = Some("/ecs/other/app-id".into());
    assert!(cgroup_of(&task, &[]).unwrap_err().contains("not all in one cgroup"), "never wider than the task's");
    assert!(spec_of(&task, &[], Kind::Iptables).unwrap_err().contains("not all in one cgroup"));
    task.containers[2].cgroup = None;
    assert_eq!(cgroup_of(&task, &[]).as_deref(), Ok("/ecs/0123456789abcdef"), "the engine's cgroup parent");
    task.containers[2].cgroup_parent = String::new();
    assert!(cgroup_of(&task, &[]).is_err());
    assert_eq!(task_id(ARN), "0123456789abcdef");
}

/// The layouts of each kind of host, as the daemon sees the task's containers: their own
/// cgroups when it can read them, else the cgroup parent the engine was given; and what is
/// refused because it is not one task's.
#[test]
fn the_cgroup_on_each_kind_of_host_and_never_wider_than_one_task() {
    let id = "0123456789abcdef0123456789abcdef";
    let slice = format!("/ecstasks.slice/ecstasks-{id}.slice");
    let lay_out = |own: &dyn Fn(&str) -> Option<String>, parent: &str| {
        let mut task = awsvpc(&[(PROXY_CONFIGURATION, PROXY)], &[]);
        for c in &mut task.containers {
            c.cgroup = own(&c.id);
            c.cgroup_parent = parent.to_owned();
        }
        task
    };
    let v2 = |c: &str| Some(format!("{slice}/docker-{c}.scope"));
    let cases: [(&str, DockerTask, Result<&str, &str>); 5] = [
        ("cgroup v2, systemd driver", lay_out(&v2, &format!("ecstasks-{id}.slice")), Ok(&slice)),
        // The daemon in a cgroup namespace that cannot see them: the slice the engine was given.
        ("a relative slice parent", lay_out(&|_| None, &format!("ecstasks-{id}.slice")), Ok(&slice)),
        (
            "task cgroups off, systemd driver",
            lay_out(&|c| Some(format!("/system.slice/docker-{c}.scope")), ""),
            Err("/system.slice is not one task's cgroup"),
        ),
        ("task cgroups off, cgroupfs driver", lay_out(&|c| Some(format!("/docker/{c}")), ""), Err("/docker is not")),
        (
            "the ECS parent given to every container",
            lay_out(&|c| Some(format!("/ecs/{c}")), "/ecs"),
            Err("/ecs is not"),
        ),
    ];
    for (what, task, expected) in cases {
        match (cgroup_of(&task, &[]), expected) {
            (Ok(cgroup), Ok(want)) => assert_eq!(cgroup, want, "{what}"),
            (Err(why), Err(want)) => {
                assert!(why.contains(want) && why.contains("ECS_ENABLE_TASK_CPU_MEM_LIMIT"), "{what}: {why}");
                let problem = spec_of(&task, &[], Kind::Ebpf).unwrap_err();
                assert!(problem.contains(want) && problem.contains("the eBPF backend needs"), "{what}: {problem}");
                assert!(spec_of(&task, &[], Kind::Iptables).unwrap().is_some(), "{what}: a rule backend needs none");
            }
            (got, want) => panic!("{what}: {got:?}, expected {want:?}"),
        }
    }
    // Another task's container below the cgroup: it holds more than one task.
    let task = lay_out(&|c| Some(format!("/tasks/{c}")), "/tasks");
    let mut other = task.clone();
    other.id = "fedcba".to_owned();
    let problem = cgroup_of(&task, &[&task, &other]).unwrap_err();
    assert!(problem.contains("/tasks is not one task's cgroup") && problem.contains("task fedcba"), "{problem}");
    assert_eq!(cgroup_of(&task, &[&task]).as_deref(), Ok("/tasks"), "the task itself is not another");
}
