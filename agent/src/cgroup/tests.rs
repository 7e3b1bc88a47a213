use std::path::{Path, PathBuf};

use super::*;

const TASK: &str = "0123456789abcdef0123456789abcdef";
const CONTAINER: &str = "4f9e0c6d9b2a";

/// `/proc/<pid>/cgroup` of a task container, as the daemon reads it, on each kind of host: the
/// cgroup from the hierarchy's root it stands for.
#[test]
fn proc_cgroup_paths_on_each_kind_of_host() {
    // The daemon in a private cgroup namespace: an ECS daemon service's container.
    let daemon = format!("/ecstasks.slice/ecstasks-{}.slice/docker-d43m0n.scope", "f".repeat(32));
    let cases: [(String, Option<&str>, Option<String>); 7] = [
        // cgroup v1 or hybrid (Amazon Linux 2), the host's cgroup namespace.
        (
            format!("1:name=systemd:/ecs/{TASK}/{CONTAINER}\n0::/ecs/{TASK}/{CONTAINER}\n"),
            None,
            Some(format!("/ecs/{TASK}/{CONTAINER}")),
        ),
        // cgroup v2 with systemd (Amazon Linux 2023).
        (
            format!("0::/ecstasks.slice/ecstasks-{TASK}.slice/docker-{CONTAINER}.scope\n"),
            None,
            Some(format!("/ecstasks.slice/ecstasks-{TASK}.slice/docker-{CONTAINER}.scope")),
        ),
        // The same container, read from the daemon's private namespace.
        (
            format!("0::/../../ecstasks-{TASK}.slice/docker-{CONTAINER}.scope\n"),
            Some(daemon.as_str()),
            Some(format!("/ecstasks.slice/ecstasks-{TASK}.slice/docker-{CONTAINER}.scope")),
        ),
        // A container without a task cgroup (task limits off, or a plain `docker run`).
        (
            format!("0::/system.slice/docker-{CONTAINER}.scope\n"),
            None,
            Some(format!("/system.slice/docker-{CONTAINER}.scope")),
        ),
        // Relative, but no namespace root to resolve it against.
        (format!("0::/../../ecstasks-{TASK}.slice/docker-{CONTAINER}.scope\n"), None, None),
        // Above the hierarchy's root.
        ("0::/../../../../x\n".to_owned(), Some("/a"), None),
        // cgroup v1 only: no unified line.
        (format!("4:memory:/ecs/{TASK}/{CONTAINER}\n"), None, None),
    ];
    for (text, root, expected) in cases {
        let path = unified_path(&text).and_then(|p| host_path(p, root.map(Path::new)));
        assert_eq!(path, expected.map(PathBuf::from), "{text:?} in namespace {root:?}");
    }
}

#[test]
fn slices_are_laid_out_as_systemd_does() {
    let cases = [
        (format!("ecstasks-{TASK}.slice"), Some(format!("/ecstasks.slice/ecstasks-{TASK}.slice"))),
        ("system.slice".to_owned(), Some("/system.slice".to_owned())),
        ("a-b-c.slice".to_owned(), Some("/a.slice/a-b.slice/a-b-c.slice".to_owned())),
        // An absolute parent (the cgroupfs driver's /ecs/<task>) is not a slice name.
        (format!("/ecs/{TASK}"), None),
        ("ecstasks-.slice".to_owned(), None),
        (".slice".to_owned(), None),
        ("a--b.slice".to_owned(), None),
        ("docker".to_owned(), None),
    ];
    for (unit, expected) in cases {
        assert_eq!(slice_path(&unit), expected.map(PathBuf::from), "{unit}");
    }
}

#[test]
fn shared_parents_are_named_and_task_cgroups_are_not() {
    let shared = [
        "/",
        "/system.slice",
        "/docker",
        "/machine.slice",
        "/user.slice",
        "/init.scope",
        "/kubepods.slice",
        "/kubepods/burstable",
        "/ecs",
        "/ecstasks.slice",
    ];
    for path in shared {
        assert!(shared_by_name(Path::new(path)).is_some(), "{path} is shared");
    }
    let tasks = [format!("/ecs/{TASK}"), format!("/ecstasks.slice/ecstasks-{TASK}.slice"), "/tests/task1".to_owned()];
    for path in tasks {
        assert_eq!(shared_by_name(Path::new(&path)), None, "{path} is one task's");
    }
    assert!(task_shaped(TASK) && task_shaped(&format!("ecstasks-{TASK}.slice")));
    assert!(!task_shaped(&format!("docker-{CONTAINER}.scope")) && !task_shaped(&"a".repeat(64)));
}

/// A hierarchy laid out in a directory: the refusal reads what a cgroup holds.
#[test]
fn a_cgroup_holding_tasks_is_refused_naming_it_and_the_remedy() {
    let root = tempfile::tempdir().unwrap();
    let dir = |path: &str| {
        let dir = root.path().join(path);
        fs::create_dir_all(&dir).unwrap();
        dir
    };
    let task = dir(&format!("ecstasks.slice/ecstasks-{TASK}.slice/docker-{CONTAINER}.scope"));
    let task = task.parent().unwrap().to_owned();
    let v1_parent = dir(&format!("tasks/{TASK}/{CONTAINER}")).parent().unwrap().parent().unwrap().to_owned();
    let system = dir(&format!("system.slice/docker-{CONTAINER}.scope")).parent().unwrap().to_owned();
    assert!(check_one_task(&task, root.path()).is_ok());
    for (cgroup, why) in [
        (root.path().join("ecstasks.slice"), "every ECS task"),
        (v1_parent, "holds the cgroups of 1 task(s)"),
        (system.clone(), "system service"),
    ] {
        let err = check_one_task(&cgroup, root.path()).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::NotOneTask { .. }), "{err:?}");
        assert!(text.starts_with(&cgroup.display().to_string()) && text.contains(why), "{text}");
        assert!(text.contains("--cgroup PATH") && text.contains("ECS_ENABLE_TASK_CPU_MEM_LIMIT"), "{text}");
    }
}

/// A hierarchy as a private cgroup namespace's process sees it through the host's mount:
/// its own pid in its own cgroup, every other process as 0.
#[test]
fn the_own_cgroup_is_the_one_listing_this_pid() {
    let root = tempfile::tempdir().unwrap();
    let cgroup = |path: &str, procs: &str| {
        let dir = root.path().join(path);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("cgroup.procs"), procs).unwrap();
    };
    cgroup("", "0\n0\n");
    cgroup("system.slice", "0\n");
    cgroup("ecs/task", "");
    cgroup("ecs/task/proxy", "0\n0\n");
    cgroup("ecs/task/init", "0\n7\n12\n");
    cgroup("ecs/other/app", "70\n");
    assert_eq!(find_listing(root.path(), "7", SEARCH_DEPTH), Some(root.path().join("ecs/task/init")));
    assert_eq!(find_listing(root.path(), "12", SEARCH_DEPTH), Some(root.path().join("ecs/task/init")));
    assert_eq!(find_listing(root.path(), "7", 2), None, "deeper than asked");
    assert_eq!(find_listing(root.path(), "8", SEARCH_DEPTH), None);
}

#[test]
fn finds_the_first_cgroup2_mount() {
    let hybrid = "\
24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
31 24 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
42 31 0:39 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu
";
    let cases = [
        (hybrid, Some("/sys/fs/cgroup/unified")),
        ("35 24 0:30 / /sys/fs/cgroup rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n", Some("/sys/fs/cgroup")),
        // No optional fields, a space escaped in the mount point.
        ("50 24 0:40 / /mnt/my\\040cgroups rw - cgroup2 none rw\n", Some("/mnt/my cgroups")),
        // cgroup v1 only.
        ("42 31 0:39 / /sys/fs/cgroup/cpu rw shared:11 - cgroup cgroup rw,cpu\n", None),
        ("", None),
    ];
    for (text, expected) in cases {
        let found = cgroup2s(mountinfo::parse_mountinfo(text)).into_iter().next().map(|m| m.mount_point);
        assert_eq!(found, expected.map(PathBuf::from), "{text}");
    }
}

#[test]
fn a_missing_cgroup_is_not_found() {
    let missing = Path::new("/sys/fs/cgroup/intercept-no-such-cgroup");
    assert!(matches!(id(missing), Err(Error::NotFound { .. })));
    assert!(matches!(open(missing), Err(Error::NotFound { .. })));
}
