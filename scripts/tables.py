raise NotImplementedError('scripts/tables.py is being written')
