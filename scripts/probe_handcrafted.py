raise NotImplementedError('scripts/probe_handcrafted.py is being written')
