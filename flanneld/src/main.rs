fn main() {
    println!("flanneld {}", env!("CARGO_PKG_VERSION"));
}
