raise NotImplementedError('scripts/extract.py is being written')
