"""Where the real test data lives: ``../shared/data`` beside the repository (CI and developers).

Set ``METAPRUNE_SHARED_DATA`` to point elsewhere.
"""

import os

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get('METAPRUNE_SHARED_DATA', os.path.join(os.path.dirname(_ROOT), 'shared', 'data'))
OMNIGLOT_DIR = os.path.join(SHARED_DATA, 'omniglot')
