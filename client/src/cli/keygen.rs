//! `enclave keygen PATH`: a client identity for brokers that authenticate clients.

use std::process::ExitCode;

use enclave_proto::keys;

use super::CliError;
use super::args::KeygenArgs;

/// The fingerprint goes to stdout alone (a script captures it for the broker's
/// allow-list); where the files went is for the person, on stderr.
pub fn keygen(args: &KeygenArgs) -> Result<ExitCode, CliError> {
    let key = keys::keygen(&args.path)?;
    eprintln!(
        "wrote {} (private key, mode 0600) and {}",
        args.path.display(),
        keys::public_key_path(&args.path).display()
    );
    println!("{}", key.fingerprint());
    Ok(ExitCode::SUCCESS)
}
