//! `flowgate-mock-upstream [--listen 127.0.0.1:9999] [--workers N] [--no-record]`
//!
//! Serves the mock until killed, after printing `listening on http://IP:PORT`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use flowgate_mock_upstream::{MockUpstream, Options};

const USAGE: &str = "usage: flowgate-mock-upstream [--listen ADDR:PORT] [--workers N] [--no-record]

  --listen ADDR:PORT  address to bind (default 127.0.0.1:0, i.e. a free port)
  --workers N         number of worker threads (default: available parallelism)
  --no-record         do not record requests (for benchmarks)

Prints `listening on http://IP:PORT` once bound, then serves until killed.";

struct Args {
    listen: SocketAddr,
    options: Options,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut options = Options {
        workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        record: true,
    };
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg, None),
        };
        let mut value = |name: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = v
                    .parse()
                    .map_err(|e| format!("invalid --listen address {v:?}: {e}"))?;
            }
            "--workers" => {
                let v = value("--workers")?;
                options.workers = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("invalid --workers value {v:?}"))?;
            }
            "--no-record" => options.record = false,
            "-h" | "--help" => return Ok(None),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Some(Args { listen, options }))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let server = match MockUpstream::start_on(args.listen, args.options) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on {}", server.url());
    let _ = stdout.flush();
    drop(stdout);
    server.wait();
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn parses_arguments() {
        let args = parse(&["--listen", "0.0.0.0:9999", "--workers=3", "--no-record"])
            .unwrap()
            .unwrap();
        assert_eq!(args.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(args.options.workers, 3);
        assert!(!args.options.record);

        let args = parse(&[]).unwrap().unwrap();
        assert_eq!(args.listen.port(), 0);
        assert!(args.options.record);

        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--workers", "0"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
