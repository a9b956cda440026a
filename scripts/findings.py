raise NotImplementedError('scripts/findings.py is being written')
