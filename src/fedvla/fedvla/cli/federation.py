"""``fedvla federation credentials|flower-credentials|skill-keys|report``: the federation's secrets,
keys and certificates, and its round table."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fedvla.cli.common import console
from fedvla.config import ConfigError


def cmd_federation_credentials(args: argparse.Namespace) -> int:
    from fedvla.federation.report import generate_credentials
    from fedvla.federation.protocol import CLIENT_ID_PATTERN

    bad = [c for c in args.client_ids if not CLIENT_ID_PATTERN.match(c)]
    if bad:
        raise ConfigError("CLIENT_ID", f"{bad[0]!r} is not a valid client id", "letters, digits, '_' and '-', at most 64")
    sys.stdout.write(generate_credentials(args.client_ids))
    return 0

def cmd_federation_report(args: argparse.Namespace) -> int:
    from fedvla.federation.report import print_federation_report

    print_federation_report(console, Path(args.directory))
    return 0


def cmd_federation_flower_credentials(args: argparse.Namespace) -> int:
    from fedvla.federation.flower_credentials import CA_KEY, make_flower_credentials

    made = make_flower_credentials(args.directory, args.hosts, args.nodes, days=args.days)
    console.print(f"SuperLink: --ssl-ca-certfile {made.ca_certificate} --ssl-certfile {made.server_certificate} "
                  f"--ssl-keyfile {made.server_key} --enable-supernode-auth", highlight=False)
    for node in made.nodes:
        console.print(f"{node}: flwr supernode register {made.node_public_key(node)} CONNECTION; then "
                      f"flower-supernode --root-certificates {made.ca_certificate} --auth-supernode-private-key "
                      f"{made.node_key(node)} ...", highlight=False)
    console.print(f"[yellow]{made.directory / CA_KEY} signs certificates: keep it off the SuperLink's machine")
    return 0


def cmd_federation_skill_keys(args: argparse.Namespace) -> int:
    from fedvla.skills.encryption import EncryptionError, write_keys

    try:
        secret, public = write_keys(args.directory)
    except EncryptionError as err:
        raise ConfigError("DIRECTORY", str(err), "a new or empty directory") from None
    console.print(f"robots: {secret.parent} (both files; skill_keys:={secret.parent}); the server: a directory "
                  f"holding {public.name} only", highlight=False)
    console.print(f"[yellow]{secret} decrypts every skill of the fleet: never put it on the server's machine")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    federation = commands.add_parser("federation", help="federation tools").add_subparsers(
        dest="federation_command", required=True)
    credentials = federation.add_parser("credentials", help="print a credentials file with fresh secrets")
    credentials.add_argument("client_ids", nargs="+", metavar="CLIENT_ID")
    credentials.set_defaults(func=cmd_federation_credentials)
    flower = federation.add_parser("flower-credentials", help="TLS certificates and SuperNode keys for a Flower "
                                   "deployment (flower_app)")
    flower.add_argument("directory", help="new directory for the files")
    flower.add_argument("--hosts", nargs="+", required=True, help="the SuperLink's names or addresses, as robots "
                        "reach it")
    flower.add_argument("--nodes", nargs="+", required=True, help="one key pair per SuperNode (robot)")
    flower.add_argument("--days", type=int, default=365, help="certificate validity")
    flower.set_defaults(func=cmd_federation_flower_credentials)
    skill_keys = federation.add_parser("skill-keys", help="a CKKS key pair for skill_encryption ckks: secret.ckks "
                                       "(robots) and public.ckks (server)")
    skill_keys.add_argument("directory", help="new directory for the two files")
    skill_keys.set_defaults(func=cmd_federation_skill_keys)
    report = federation.add_parser("report", help="round table of a federation directory")
    report.add_argument("directory", help="the federation_dir (with server/state.json)")
    report.set_defaults(func=cmd_federation_report)
