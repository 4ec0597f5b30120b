//! `/opt/cni/bin/flannel`: reads the CNI environment and stdin, prints one JSON object.

use std::io::Write;

fn main() {
    let outcome = cni_plugin::skel::run(&|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
