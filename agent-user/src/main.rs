//! `warden`: the binary edge. Errors become messages and exit codes here.
fn main() {
    std::process::exit(agent_user::cli::main());
}
