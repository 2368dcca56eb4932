//! Each host's own mount namespace: private paths and its own /sys.

use std::{fs, path::Path};

use halo_tests::lab::LabBuilder;

#[test]
fn a_private_path_differs_between_hosts_and_the_real_machine() {
    let lab = LabBuilder::new("private")
        .hosts(&["n1", "n2"])
        .build()
        .expect("build lab");
    let (n1, n2) = (lab.host("n1"), lab.host("n2"));

    n1.sh("echo one > /var/lib/app/x")
        .expect("write /var/lib/app/x in n1");
    let on_n2 = n2
        .sh("ls -A /var/lib/app")
        .expect("list /var/lib/app in n2");
    assert_eq!(
        on_n2, "",
        "expected n2's /var/lib/app to be empty, found {on_n2:?}"
    );
    assert!(
        !Path::new("/var/lib/app/x").exists(),
        "expected no /var/lib/app/x on the real machine, found one"
    );

    n2.sh("echo two > /var/lib/app/x")
        .expect("write /var/lib/app/x in n2");
    let on_n1 = n1
        .sh("cat /var/lib/app/x")
        .expect("read /var/lib/app/x in n1");
    assert_eq!(on_n1, "one\n", "n1's /var/lib/app/x after n2 wrote its own");
    let outside = n2.outside_path("/var/lib/app/x");
    let seen = fs::read_to_string(&outside)
        .unwrap_or_else(|error| panic!("expected to read {}: {error}", outside.display()));
    assert_eq!(
        seen,
        "two\n",
        "n2's /var/lib/app/x seen from outside at {}",
        outside.display()
    );
}

#[test]
fn a_host_sees_its_own_interfaces_and_kernel_filesystems() {
    let lab = LabBuilder::new("sysfs")
        .host("n1")
        .build()
        .expect("build lab");
    let n1 = lab.host("n1");
    let interfaces = n1
        .sh("ls /sys/class/net")
        .expect("list /sys/class/net in n1");
    assert_eq!(
        interfaces, "eth0\nlo\n",
        "interfaces in n1's /sys/class/net"
    );
    let kinds = n1
        .sh("stat -f -c %T /sys /sys/fs/bpf /sys/kernel/tracing")
        .expect("stat n1's kernel filesystems");
    assert_eq!(
        kinds, "sysfs\nbpf_fs\ntracefs\n",
        "filesystem types of /sys, /sys/fs/bpf, /sys/kernel/tracing in n1"
    );
}
