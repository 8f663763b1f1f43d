"""Word lists for the generated tasks: common single-token English words, so prompts stay
single-token per word in GPT-2's BPE (with a leading space) as well as in the toy model's
word-level tokenizer."""

NAMES = (
    "Mary John Alice Bob Sarah James Emma David Anna Paul Laura Mark Kate Tom Lisa Mike "
    "Susan Peter Jane Chris Amy Steve Rose Dan Helen Jack Nancy Sam Lucy Ben Julia Max "
    "Grace Adam Ellen Eric Diana Frank Clara Henry"
).split()

PLACES = "store park school garden house office station market beach library".split()
THINGS = "drink ball book bag snack letter gift key cake pen".split()

# (singular, plural) pairs for subject-verb agreement.
NOUN_PAIRS = [
    ("key", "keys"), ("dog", "dogs"), ("cat", "cats"), ("boy", "boys"), ("girl", "girls"),
    ("car", "cars"), ("book", "books"), ("bird", "birds"), ("tree", "trees"), ("door", "doors"),
    ("house", "houses"), ("teacher", "teachers"), ("doctor", "doctors"), ("friend", "friends"),
    ("window", "windows"), ("table", "tables"), ("player", "players"), ("farmer", "farmers"),
    ("student", "students"), ("painting", "paintings"),
]
PREPOSITIONS = "near behind beside under above with".split()
ADJECTIVES = "old new small big red green happy quiet".split()

COLORS = "red blue green yellow black white brown purple orange pink".split()
OBJECTS = (
    "pencil cup key book phone lamp ball hat shoe box plate chair clock bottle sock "
    "fork coin ring spoon brush"
).split()

POSITIVE = "great wonderful excellent amazing brilliant lovely superb delightful".split()
NEGATIVE = "awful terrible boring horrible dreadful poor weak dull".split()
NEUTRAL = "long short new old loud quiet simple modern".split()
TOPICS = "movie film story book show play song album".split()
ASPECTS = "acting plot music ending cast script pace dialogue".split()
