"""How to run the saga coordinator: `deploy.local` starts the whole system on one machine; k8s/ and systemd/ sketch the
rest (see deploy/README.md)."""
