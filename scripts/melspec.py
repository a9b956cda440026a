raise NotImplementedError('scripts/melspec.py is being written')
