"""A generic retain set: everyday prompts whose representations an erasure should leave in place."""

GENERIC_PROMPTS: tuple[str, ...] = (
    "a photo of a dog", "a photo of a cat", "a red car parked on a street", "a bowl of fruit on a table",
    "a mountain landscape at sunset", "a portrait of a woman smiling", "a man riding a bicycle",
    "a city skyline at night", "a cup of coffee", "a bird sitting on a branch", "a beach with palm trees",
    "an oil painting of a river", "a watercolor of flowers", "a pencil sketch of a house", "a child playing football",
    "a plate of pasta", "a snowy forest", "a sailboat on the sea", "a cartoon of a robot", "a vintage photograph",
    "a bookshelf full of books", "a horse in a field", "a modern kitchen interior", "a close-up of a leaf",
    "an astronaut in space", "a busy market street", "a teddy bear on a bed", "a lighthouse on a cliff",
    "a bowl of soup", "a group of friends laughing", "a dragon made of clouds", "a painting in the style of Monet",
    "a blue abstract pattern", "a green apple", "an old man reading a newspaper", "a train crossing a bridge",
)
