"""`python -m deploy.local [--config deploy/local/cluster.toml] [--tls]` (`make run`): the whole system on this machine.

Starts the processes that cluster.toml lists, one line per process once it is healthy, relays their logs prefixed with
their names, and stops them all on Ctrl-C or SIGTERM (a second Ctrl-C kills what is left). Exits 0 after a requested
stop, 1 if a process failed to start or exited on its own, 2 for a bad config file.

With --tls every process serves mutual TLS with its own certificate from a local CA under --tls-dir (default
$SAGA_DATA_DIR/tls, created on first use), and dials the others with it.

`python -m deploy.local certs --dir DIR [--config FILE] [NAME ...]`: creates the CA (if DIR has none) and a certificate
per NAME (default: every gRPC process of the cluster file, each router included, then operator, client and launcher),
each with URI SAN spiffe://saga/NAME, DNS localhost and IP 127.0.0.1. Existing certificates are kept unless --renew.

With --tls every process also gets --auth-policy: the policy of its kind, written beside the CA
(deploy/local/authpolicy.py), with a JWT key pair for test tokens.

`python -m deploy.local certs --k8s [--dir DIR] [--namespace saga] [--shards 3] [--replica-credentials]`: the
Kubernetes overlays' Secrets (TLS, journal key files, JWT key; deploy/local/k8s_secrets.py) as DIR/secrets.yaml, from
files kept in DIR (default $SAGA_DATA_DIR/k8s) and made there if missing.

`python -m deploy.local token --sub alice --roles operator [--ttl-s 3600] [--key PATH]`: prints a bearer JWT the router
of a --tls system accepts (ES256, audience "saga"), signed with the local key (default $SAGA_DATA_DIR/tls/
jwt-signing-key.pem, made by the first --tls run); e.g. `sagactl --token-file <(python -m deploy.local token ...)`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .authpolicy import SIGNING_KEY, mint_token, with_tls
from .certs import CALLERS, LocalCA, default_names
from .cluster import DEFAULT_CONFIG, ClusterConfigError, load
from .k8s_secrets import write_secrets
from .supervisor import Supervisor


def certs_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.local certs", description="Create a local CA and certificates.")
    p.add_argument("--dir", type=Path, help="where ca.pem, NAME.pem and NAME-key.pem go (required without --k8s)")
    p.add_argument(
        "names",
        nargs="*",
        help=f"certificate names (default: every gRPC process of --config, then {', '.join(CALLERS)})",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster file (default %(default)s)")
    p.add_argument("--renew", action="store_true", help="issue new certificates (new serials) even if present")
    k8s = p.add_argument_group("Kubernetes", "--k8s: the overlays' Secrets as one manifest, DIR/secrets.yaml")
    k8s.add_argument("--k8s", action="store_true", help="write the Secrets (default --dir: $SAGA_DATA_DIR/k8s)")
    k8s.add_argument("--namespace", default="saga", help="the Secrets' namespace and DNS names (default %(default)s)")
    k8s.add_argument("--shards", type=int, default=3, help="journal key files saga-shard-0.. (default %(default)s)")
    k8s.add_argument(
        "--replica-credentials",
        action="store_true",
        help="also saga-replica-credentials, random keys for the dev overlay's MinIO (prod: your bucket's keys)",
    )
    args = p.parse_args(argv)
    if args.k8s:
        return _k8s_secrets(args)
    if args.dir is None:
        p.error("--dir is required (without --k8s)")
    ca = LocalCA(args.dir)
    try:
        for name in args.names or default_names(load(args.config)):
            issued = ca.issue(name, renew=args.renew)
            print(f"{issued.files.cert} (key {issued.files.key}, serial {issued.serial:x})")
    except ValueError as e:  # ClusterConfigError too
        print(f"deploy.local certs: {e}", file=sys.stderr)
        return 2
    print(f"CA: {ca.ca_path}")
    return 0


def _k8s_secrets(args: argparse.Namespace) -> int:
    try:
        directory = args.dir or load(args.config).data_dir / "k8s"
        out = write_secrets(
            directory, namespace=args.namespace, shards=args.shards, replica_credentials=args.replica_credentials
        )
    except (OSError, ValueError) as e:  # ClusterConfigError too
        print(f"deploy.local certs --k8s: {e}", file=sys.stderr)
        return 2
    print(f"{out}: the Secrets of deploy/k8s/README.md, from {directory} (back it up: journal keys, CA)")
    print(f"  kubectl apply -f {out}")
    return 0


def token_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.local token", description="Mint a bearer JWT for testing.")
    p.add_argument("--sub", required=True, help="who the token names (the audit trail shows it)")
    p.add_argument("--roles", required=True, help="comma-separated: client, operator")
    p.add_argument("--ttl-s", type=int, default=3600, help="seconds until it expires (default %(default)s)")
    p.add_argument("--key", type=Path, help=f"ES256 signing key (default $SAGA_DATA_DIR/tls/{SIGNING_KEY})")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster file, for $SAGA_DATA_DIR's default")
    args = p.parse_args(argv)
    try:
        key = args.key or load(args.config).data_dir / "tls" / SIGNING_KEY
        roles = [r.strip() for r in args.roles.split(",") if r.strip()]
        print(mint_token(key, args.sub, roles, args.ttl_s))
    except (OSError, ValueError, ClusterConfigError) as e:
        print(f"deploy.local token: {e} (run `python -m deploy.local --tls` once to create the key)", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["certs"]:
        return certs_main(argv[1:])
    if argv[:1] == ["token"]:
        return token_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m deploy.local", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="cluster file (default %(default)s)")
    p.add_argument("--tls", action="store_true", help="mutual TLS between every process, certificates from a local CA")
    p.add_argument("--tls-dir", type=Path, help="with --tls: the CA's directory (default $SAGA_DATA_DIR/tls)")
    args = p.parse_args(argv)
    try:
        cluster = load(args.config)
    except ClusterConfigError as e:
        print(f"deploy.local: {e}", file=sys.stderr)
        return 2
    if args.tls:
        cluster = with_tls(cluster, LocalCA(args.tls_dir or cluster.data_dir / "tls"))
    elif args.tls_dir:
        p.error("--tls-dir: only with --tls")
    supervisor = Supervisor(cluster)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _sig, _frame: supervisor.request_stop())
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
