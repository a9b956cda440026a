raise NotImplementedError('scripts/train.py is being written')
