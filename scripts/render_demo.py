raise NotImplementedError('scripts/render_demo.py is being written')
