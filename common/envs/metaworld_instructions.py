"""Language instructions for the Meta-World v3 tasks.

Meta-World ships no natural-language task descriptions, so this module holds
hand-written paraphrases, four per task, written against what each task's
environment (``metaworld/envs/sawyer_*_v3.py``) and scripted policy
(``metaworld/policies/``) actually require. They are lower case, imperative
and carry no trailing period.

``common/envs/metaworld.py`` uses this table to give each demonstration and
evaluation episode an instruction. The first paraphrase of each task is the
canonical one and is what evaluation uses unless asked otherwise; the other
three are alternatives (e.g. for paraphrase augmentation in training or for
robustness checks).

This is a plain data module: it defines ``INSTRUCTIONS`` and nothing else.
"""

INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "assembly-v3": (
        "pick up the nut and place it onto the peg",
        "grab the ring by its handle and slide it down over the peg",
        "fit the round nut onto the peg",
        "lift the nut and drop it over the vertical peg",
    ),
    "basketball-v3": (
        "pick up the ball and dunk it into the hoop",
        "grab the basketball and put it through the basket",
        "lift the ball up and drop it into the hoop",
        "score by placing the basketball in the basket",
    ),
    "bin-picking-v3": (
        "pick the cube out of one bin and place it in the other bin",
        "move the block from its bin into the neighboring bin",
        "grab the cube from its bin and drop it into the empty bin",
        "transfer the block into the other bin",
    ),
    "box-close-v3": (
        "pick up the lid and put it on the box",
        "close the box by placing the lid on top",
        "grab the box cover and set it onto the box",
        "lift the lid and cover the box with it",
    ),
    "button-press-topdown-v3": (
        "press the button down from above",
        "push the button down from the top",
        "reach over the button and press it straight down",
        "lower the gripper onto the button to press it",
    ),
    "button-press-topdown-wall-v3": (
        "press the button down from above, past the wall",
        "reach over the wall and push the button down from the top",
        "get around the wall and press the button from above",
        "lower the gripper onto the button behind the wall",
    ),
    "button-press-v3": (
        "press the button",
        "push the button in",
        "push the button on the box forward until it is pressed in",
        "move forward and press the button in",
    ),
    "button-press-wall-v3": (
        "press the button behind the wall",
        "reach over the wall and push the button in",
        "get past the wall and press the button",
        "go over the wall and push the button forward",
    ),
    "coffee-button-v3": (
        "press the button on the coffee machine",
        "push the coffee machine's button",
        "start the coffee machine by pressing its button",
        "reach forward and push the button on the coffee maker",
    ),
    "coffee-pull-v3": (
        "pull the mug out from under the coffee machine",
        "grab the cup and draw it away from the coffee maker",
        "take the mug out of the coffee machine toward you",
        "slide the coffee cup back away from the machine",
    ),
    "coffee-push-v3": (
        "push the mug under the coffee machine",
        "slide the cup forward beneath the coffee maker's spout",
        "grab the mug and move it under the coffee machine",
        "place the coffee cup under the machine's nozzle",
    ),
    "dial-turn-v3": (
        "turn the dial",
        "rotate the dial knob to the goal",
        "twist the dial around",
        "spin the knob on the dial",
    ),
    "disassemble-v3": (
        "pick the nut up off the peg",
        "lift the ring off the peg",
        "remove the round nut from the peg",
        "grab the nut by its handle and pull it up off the peg",
    ),
    "door-close-v3": (
        "push the door closed",
        "close the open door",
        "swing the door shut",
        "push on the door until it closes",
    ),
    "door-lock-v3": (
        "turn the lock knob down to lock the door",
        "lock the door",
        "rotate the door's lock downward",
        "push the lock lever down",
    ),
    "door-open-v3": (
        "pull the door open",
        "open the door by its handle",
        "swing the door open",
        "grab the door handle and pull the door open",
    ),
    "door-unlock-v3": (
        "turn the lock knob to unlock the door",
        "unlock the door",
        "rotate the door's lock sideways to unlock it",
        "push the lock lever to the unlocked position",
    ),
    "hand-insert-v3": (
        "put the block into the hole in the table",
        "push the cube into the hole",
        "move the block over the hole and insert it",
        "drop the block down into the table's hole",
    ),
    "drawer-close-v3": (
        "push the drawer closed",
        "close the drawer",
        "slide the open drawer shut",
        "push the drawer back into the cabinet",
    ),
    "drawer-open-v3": (
        "pull the drawer open",
        "open the drawer",
        "grab the drawer handle and pull it out",
        "slide the drawer out toward you",
    ),
    "faucet-open-v3": (
        "turn the faucet on",
        "open the faucet",
        "rotate the faucet handle to the open position",
        "swing the tap handle to turn the water on",
    ),
    "faucet-close-v3": (
        "turn the faucet off",
        "close the faucet",
        "rotate the faucet handle to the closed position",
        "swing the tap handle back to shut the water off",
    ),
    "hammer-v3": (
        "pick up the hammer and drive the nail in",
        "hammer the nail into the block",
        "grab the hammer and hit the nail with it",
        "use the hammer to knock the nail in",
    ),
    "handle-press-side-v3": (
        "press the handle down from the side",
        "push the side handle down",
        "push down on the sideways handle",
        "lower the handle on the side box",
    ),
    "handle-press-v3": (
        "press the handle down",
        "push the handle down",
        "push down on the handle until it bottoms out",
        "lower the handle by pressing on it",
    ),
    "handle-pull-side-v3": (
        "pull the handle up from the side",
        "lift the side handle up",
        "grab the sideways handle and raise it",
        "raise the handle on the side box",
    ),
    "handle-pull-v3": (
        "pull the handle up",
        "lift the handle up",
        "raise the handle from below",
        "grab the handle and pull it upward",
    ),
    "lever-pull-v3": (
        "pull the lever up",
        "lift the lever",
        "rotate the lever upward",
        "raise the lever until it points up",
    ),
    "pick-place-wall-v3": (
        "pick up the block and place it at the goal on the other side of the wall",
        "lift the cube over the wall and put it at the target",
        "grab the block and carry it over the wall to the goal",
        "move the block past the wall to the goal position",
    ),
    "pick-out-of-hole-v3": (
        "pick the block out of the hole and lift it to the goal",
        "take the cube out of the hole",
        "grab the block in the hole and raise it to the target",
        "lift the block up out of the hole",
    ),
    "pick-place-v3": (
        "pick up the block and place it at the goal",
        "grab the cube and move it to the target position",
        "lift the block and carry it to the goal",
        "pick the cube up and put it at the target",
    ),
    "plate-slide-v3": (
        "slide the plate forward into the net",
        "push the plate into the goal",
        "slide the puck away from you into the net",
        "shove the plate forward into the goal",
    ),
    "plate-slide-side-v3": (
        "slide the plate sideways into the net",
        "push the plate to the side into the goal",
        "slide the puck sideways into the net",
        "shove the plate across into the side goal",
    ),
    "plate-slide-back-v3": (
        "slide the plate back out of the net toward you",
        "pull the plate out of the goal",
        "draw the puck back out of the net",
        "drag the plate back from the goal toward you",
    ),
    "plate-slide-back-side-v3": (
        "slide the plate sideways back out of the net",
        "pull the plate out of the side goal",
        "drag the puck sideways out of the net",
        "slide the plate across out of the goal to the middle",
    ),
    "peg-insert-side-v3": (
        "insert the peg sideways into the hole",
        "pick up the peg and push it into the hole from the side",
        "grab the peg and slide it sideways into the box's hole",
        "put the peg into the hole on the side of the box",
    ),
    "peg-unplug-side-v3": (
        "unplug the peg sideways",
        "pull the peg out of the socket to the side",
        "grab the plugged peg and slide it out sideways",
        "remove the peg from its hole by pulling it sideways",
    ),
    "soccer-v3": (
        "push the ball into the goal",
        "kick the soccer ball into the net",
        "nudge the ball into the goal",
        "score by pushing the soccer ball into the net",
    ),
    "stick-push-v3": (
        "use the stick to push the thermos to the goal",
        "grab the stick and push the thermos with it",
        "pick up the stick and shove the thermos sideways with it",
        "push the thermos to the target using the stick",
    ),
    "stick-pull-v3": (
        "use the stick to pull the thermos to the goal",
        "grab the stick, hook the thermos handle and pull it",
        "pick up the stick and drag the thermos with it",
        "pull the thermos to the target using the stick",
    ),
    "push-v3": (
        "push the block to the goal",
        "slide the cube to the target position",
        "push the puck across the table to the goal",
        "move the block to the target by pushing it",
    ),
    "push-wall-v3": (
        "push the block around the wall to the goal",
        "slide the cube past the wall to the target",
        "push the puck to the goal on the other side of the wall",
        "move the block around the wall by pushing it to the target",
    ),
    "push-back-v3": (
        "push the block back toward you to the goal",
        "slide the cube back to the target",
        "pull the puck back across the table to the goal",
        "drag the block back toward the robot to the target",
    ),
    "reach-v3": (
        "move the gripper to the goal position",
        "reach to the target",
        "bring the hand to the goal point",
        "go to the target position",
    ),
    "reach-wall-v3": (
        "reach over the wall to the goal",
        "move the gripper past the wall to the target position",
        "bring the hand over the wall to the goal point",
        "go around the wall to reach the target",
    ),
    "shelf-place-v3": (
        "pick up the block and place it on the shelf",
        "put the cube onto the shelf",
        "grab the block and set it on the shelf",
        "lift the cube and slide it onto the shelf",
    ),
    "sweep-into-v3": (
        "sweep the block into the hole",
        "push the cube into the hole in the table",
        "slide the block into the hole",
        "move the cube forward into the hole",
    ),
    "sweep-v3": (
        "sweep the block off the table",
        "push the cube off the edge of the table",
        "slide the block sideways off the table",
        "move the cube over the side of the table",
    ),
    "window-open-v3": (
        "slide the window open",
        "open the window",
        "push the window handle sideways to open it",
        "slide the window sash open along its track",
    ),
    "window-close-v3": (
        "slide the window closed",
        "close the window",
        "push the window handle sideways to shut it",
        "slide the window sash shut along its track",
    ),
}
