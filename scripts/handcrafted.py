raise NotImplementedError('scripts/handcrafted.py is being written')
