//! `/opt/cni/bin/flannel`: reads the CNI environment and stdin, prints one JSON object.

use std::io::Write;

/// The plugin allocates through dlmalloc instead of musl's malloc.
///
/// musl's allocator (mallocng) gives memory back to the kernel as soon as a size class
/// empties, so a process that parses a few netlink replies keeps mapping and unmapping the
/// same few pages: one ADD made 26 `mmap` and 20 `munmap` calls, each unmap a TLB flush and
/// each new page a fault, which on a VM cost more than the JSON and netlink work itself.
/// dlmalloc grows its heap in 64 KiB segments and keeps freed memory (it trims only above
/// 2 MiB), so the same ADD makes 7 `mmap` and 1 `munmap` (the measured effect is in the
/// README's "Design measurements"). The plugin is a short-lived process, so a heap that only
/// grows is the right trade.
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

fn main() {
    let outcome = cni_plugin::skel::run(&|k| std::env::var(k).ok(), &mut std::io::stdin().lock());
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = writeln!(out, "{}", outcome.stdout);
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
