from sqlalchemy import (
    Column,
    Index,
    Integer,
    Text,
)

from .meta import Base


class MyModel(Base):
    __tablename__ = 'models'
    # step 4: the cache keys (and tags) a change to this row makes stale
    __cache_keys__ = ('mymodel:{name}',)
    __cache_tags__ = ()

    id = Column(Integer, primary_key=True)
    name = Column(Text)
    value = Column(Integer)


Index('my_index', MyModel.name, unique=True, mysql_length=255)
