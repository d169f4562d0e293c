//! `lb`: the load balancer daemon (`lb run`) and its command-line client (everything else).
fn main() {
    lb_userspace::cli::main()
}
