"""The shard's secrets: the key file, payment details sealed in the journal (AEAD from `cryptography`), the keyed
hash that derives saga ids, and the fingerprints that tie a journal to its key file (sealing).

May import: coordinator.journal, coordinator.saga, coordinator.config, common. Imported by coordinator.shard, the
operations and the command line.
"""
