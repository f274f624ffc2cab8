//! `fleetml keys generate`: the plane's ed25519 signing key pair, offline.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Write DIR/signing.key (ed25519 private key, PEM) and DIR/signing.pub.
    Generate {
        /// The folder to write the two files to.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::Generate { out } => {
            let (private_path, public_path, key_pair) = crate::keys::generate(&out)?;
            println!("wrote {} and {} (key id {})", private_path.display(), public_path.display(), key_pair.key_id());
        }
    }
    Ok(ExitCode::SUCCESS)
}
