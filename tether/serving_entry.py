"""The models-from-code entry of a registered Tether version (``log_model(python_model=<this file>)``).

MLflow copies this file into the model and runs it at load time, after putting the model's
``code/`` folder (the ``tether`` package logged with the version) first on ``sys.path``; it
only names the model class. Nothing else belongs here: it runs on every load.
"""

from mlflow.models import set_model

from tether.serving import TetherRecommender

set_model(TetherRecommender())
