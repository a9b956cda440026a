raise NotImplementedError('scripts/probe_deep.py is being written')
