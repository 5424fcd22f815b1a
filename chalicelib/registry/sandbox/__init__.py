"""Stand-ins for Project Origin's registry and chronicler: what a sandbox, the embedded stack
and the tests talk to instead of the real services.

The simulator (`simulator.py`) with its fault model, the verifier of the real wire format
(`verifier.py`), the registry's rules written once for both (`rules.py`), and a chronicler
(`chronicler.py`). Nothing outside this folder in `chalicelib/` imports it except the
composition root, and only for a stage that runs an in-process simulator; what talks to a
real registry (the port, the clients, the transaction builders, the crypto, the wire formats)
is one folder up.
"""
