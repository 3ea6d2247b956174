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

``HELD_OUT_INSTRUCTIONS`` holds other paraphrases, written separately and never used in training: the
benchmark's "novel phrasing" split tells the policy one of them, to measure whether it follows the meaning of an
instruction or only recognises the strings it was trained on. None of them equals a training paraphrase.

This is a plain data module: it defines these two tables and nothing else.
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


HELD_OUT_INSTRUCTIONS: dict[str, tuple[str, ...]] = {
    "reach-v3": (
        "put your hand where the marker is",
        "touch the target point with the gripper",
        "position the end effector at the marked spot",
    ),
    "push-v3": (
        "shove the puck over to the marker",
        "nudge the block along the table until it reaches the target",
        "without lifting it, move the puck to the marked spot",
    ),
    "pick-place-v3": (
        "take the puck and set it down at the marker",
        "grasp the block, raise it and bring it to the target point",
        "carry the puck through the air to the marked spot",
    ),
    "door-open-v3": (
        "swing the door outward using the handle",
        "get the door open",
        "pull on the handle until the door is wide open",
    ),
    "drawer-open-v3": (
        "draw the drawer out of the cabinet",
        "pull out the drawer",
        "get the drawer open by its handle",
    ),
    "drawer-close-v3": (
        "shut the drawer",
        "shove the drawer back in",
        "close the drawer that is sticking out",
    ),
    "button-press-topdown-v3": (
        "push down on the button from overhead",
        "press the button vertically from the top",
        "bring the gripper down to press the button",
    ),
    "peg-insert-side-v3": (
        "grab the peg and stick it into the side hole",
        "lift the peg and slide it into the opening on the box",
        "fit the peg horizontally into the hole",
    ),
    "window-open-v3": (
        "slide the window sideways to open it",
        "get the window open",
        "move the window pane along its rail until it is open",
    ),
    "window-close-v3": (
        "shut the window",
        "slide the window pane back until it is closed",
        "move the window sideways to close it",
    ),
    "assembly-v3": (
        "grasp the wrench and lower its ring over the upright post",
        "put the ring around the peg so that it rests at the bottom",
        "carry the nut across and fit it down onto the post",
    ),
    "basketball-v3": (
        "make a basket with the ball",
        "grasp the ball, raise it above the rim and release it into the net",
        "carry the ball to the hoop and let it fall through",
    ),
    "bin-picking-v3": (
        "move the cube across to the bin next to it",
        "relocate the cube to the second container",
        "raise the cube from its container and put it down in the adjacent one",
    ),
    "box-close-v3": (
        "cap the box with its lid",
        "grasp the cover and lower it until it sits on the box",
        "put the top on the box to shut it",
    ),
    "button-press-topdown-wall-v3": (
        "press the button vertically while avoiding the wall",
        "clear the barrier, then bring the gripper down on the button",
        "from overhead, push down on the button that sits past the wall",
    ),
    "button-press-v3": (
        "depress the button set into the box",
        "press the button horizontally",
        "jab the button straight ahead until it is depressed",
    ),
    "button-press-wall-v3": (
        "lift over the barrier and push in the button",
        "press the button horizontally despite the wall in front of it",
        "hop the wall and jab the button straight ahead",
    ),
    "coffee-button-v3": (
        "hit the espresso machine's button",
        "push in the start button of the coffee maker",
        "brew a coffee by pressing the machine's button",
    ),
    "coffee-pull-v3": (
        "bring the cup out from beneath the spout toward the robot",
        "drag the mug backward, away from the espresso machine",
        "remove the cup from beneath the brewer by pulling it back",
    ),
    "coffee-push-v3": (
        "slide the mug forward until it sits beneath the spout",
        "move the cup away from you and under the espresso machine",
        "shove the cup into place below the coffee maker's nozzle",
    ),
    "dial-turn-v3": (
        "give the dial a turn",
        "twist the knob to the target setting",
        "rotate the round dial until it reaches the goal",
    ),
    "disassemble-v3": (
        "unseat the ring from the post",
        "grasp the wrench and raise its ring clear of the peg",
        "lift the nut upward until it comes free of the post",
    ),
    "door-close-v3": (
        "shut the door",
        "swing the open door back until it is closed",
        "push the door back into its frame",
    ),
    "door-lock-v3": (
        "flip the latch down to secure the door",
        "press the door's latch downward until it locks",
        "engage the lock on the door",
    ),
    "door-unlock-v3": (
        "release the lock on the door",
        "flip the latch sideways so the door is no longer locked",
        "slide the door's latch over until it unlocks",
    ),
    "hand-insert-v3": (
        "place the cube in the opening in the tabletop",
        "carry the block to the hole and lower it inside",
        "sink the cube down through the tabletop opening",
    ),
    "faucet-open-v3": (
        "get the water running",
        "switch on the tap",
        "twist the faucet's lever until the water flows",
    ),
    "faucet-close-v3": (
        "stop the water from running",
        "switch off the tap",
        "twist the faucet's lever until the water stops",
    ),
    "hammer-v3": (
        "use the mallet to pound the nail in",
        "grip the hammer and strike the nail until it is flush",
        "take the hammer and tap the nail home",
    ),
    "handle-press-side-v3": (
        "bear down on the handle that sticks out sideways",
        "push the side-facing handle all the way to the bottom",
        "move the sideways handle downward until it stops",
    ),
    "handle-press-v3": (
        "lean on the handle so it sinks as low as it can go",
        "push the handle all the way to the bottom",
        "force the handle downward by pressing on its top",
    ),
    "handle-pull-side-v3": (
        "raise the side-facing handle as far as it goes",
        "hook the sideways handle from underneath and lift it",
        "bring the handle that sticks out sideways upward",
    ),
    "handle-pull-v3": (
        "raise the handle as far as it goes",
        "hook the handle from underneath and lift it",
        "bring the handle upward until it stops",
    ),
    "lever-pull-v3": (
        "swing the lever upward",
        "flip the lever up",
        "rotate the lever arm until it stands upright",
    ),
    "pick-place-wall-v3": (
        "grasp the puck, lift it above the barrier and set it at the marker",
        "take the cube across the obstacle and put it down at the marked spot",
        "raise the block high enough to clear the wall, then bring it to the target point",
    ),
    "pick-out-of-hole-v3": (
        "extract the block from the hole and hold it at the target point",
        "reach into the hole, grasp the cube and bring it up to the marker",
        "retrieve the puck from its hole, then hoist it up to the goal spot",
    ),
    "plate-slide-v3": (
        "send the disc forward so it lands in the net",
        "push the plate away from the robot until it is in the goal",
        "glide the plate straight ahead into the net",
    ),
    "plate-slide-side-v3": (
        "send the disc across into the net at the side",
        "push the puck laterally until it is in the goal",
        "glide the plate to one side into the net",
    ),
    "plate-slide-back-v3": (
        "retrieve the plate from the goal by pulling it toward the robot",
        "drag the disc backward until it leaves the net",
        "bring the puck back from the net to the marker",
    ),
    "plate-slide-back-side-v3": (
        "drag the disc laterally until it leaves the net",
        "retrieve the plate from the side goal by sliding it across",
        "pull the puck sideways from the net to the marker",
    ),
    "peg-unplug-side-v3": (
        "grasp the peg and draw it horizontally out of the hole",
        "extract the plugged-in peg from the side of the box",
        "pull the inserted peg free in a horizontal direction",
    ),
    "soccer-v3": (
        "knock the ball past the goal line",
        "roll the football into the goal",
        "shove the ball forward until it is inside the goal",
    ),
    "stick-push-v3": (
        "take the stick and use it as a tool to shove the thermos over to the marker",
        "with the rod in hand, shove the flask across to the target",
        "grip the stick and nudge the container sideways to the goal with it",
    ),
    "stick-pull-v3": (
        "take the stick, catch the thermos by its handle with it and haul it to the marker",
        "with the rod in hand, pull the flask back to the target",
        "grip the stick and use it to draw the container toward the goal",
    ),
    "push-wall-v3": (
        "shove the puck around the barrier to the marker",
        "nudge the block past the obstacle along the table to the target point",
        "keep the block on the table while steering it around the obstruction to the marked spot",
    ),
    "push-back-v3": (
        "shove the puck toward the robot until it reaches the marker",
        "bring the block nearer to the robot, sliding it along the table to the target",
        "drag the puck closer to you until it reaches the marked spot",
    ),
    "reach-wall-v3": (
        "put your hand at the marker on the far side of the wall",
        "move the end effector over the barrier to the target point",
        "reach past the obstacle and touch the marked spot",
    ),
    "shelf-place-v3": (
        "set the puck down on the shelf",
        "grasp the cube and put it up on the rack",
        "raise the block and leave it resting on the shelf",
    ),
    "sweep-into-v3": (
        "brush the cube forward until it falls in the hole",
        "shove the block along the table into the hole",
        "slide the puck across to the hole so it drops in",
    ),
    "sweep-v3": (
        "knock the block over the table's edge",
        "shove the cube sideways until it falls from the table",
        "clear the puck from the table by pushing it over the edge",
    ),
}
